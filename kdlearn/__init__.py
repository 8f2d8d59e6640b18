"""kdlearn: soft-target losses for knowledge distillation, and the course that teaches them.

    import kdlearn
    loss = kdlearn.kd_loss(student_logits, teacher_logits, labels, T=4.0, alpha=0.9)

The losses live in kdlearn.losses (plain PyTorch, the specification); the exercise checks of
the lessons in kdlearn.exercises.
"""

from kdlearn.losses import generalized_jsd, kd_loss, kl_divergence, soft_targets

__version__ = "0.1.0"
__all__ = ["soft_targets", "kd_loss", "kl_divergence", "generalized_jsd"]
