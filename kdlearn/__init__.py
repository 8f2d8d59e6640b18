"""kdlearn: soft-target losses for knowledge distillation, and the course that teaches them.

    import kdlearn
    loss = kdlearn.kd_loss(student_logits, teacher_logits, labels, T=4.0, alpha=0.9)

The losses live in kdlearn.losses (plain PyTorch, the specification), their fused Triton kernels
and the chunked LM head + loss in kdlearn.kernels, the benchmark in kdlearn.bench
(python -m kdlearn.bench), the exercise checks of the lessons in kdlearn.exercises.
"""

from kdlearn.kernels.linear_divergence import fused_linear_kl
from kdlearn.losses import generalized_jsd, kd_loss, kl_divergence, soft_targets, topk_kl

__version__ = "0.1.0"
__all__ = ["soft_targets", "kd_loss", "kl_divergence", "generalized_jsd", "topk_kl", "fused_linear_kl"]
