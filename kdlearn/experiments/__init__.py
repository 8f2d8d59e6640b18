"""Experiments that reproduce a paper's result end to end, each runnable from the command line.

    python -m kdlearn.experiments.hinton         Hinton, Vinyals and Dean 2015: teacher, small net
                                                 from scratch, small net distilled (lessons 02, 03)
    python -m kdlearn.experiments.hinton_tuning  how hinton's digits settings were chosen: a scan on
                                                 the validation split, shipped as hinton_tuning.json
    python -m kdlearn.experiments.train_teachers the language-model teachers of kdlearn.teachers
    python -m kdlearn.experiments.divergences    forward KL, reverse KL and JSD(beta), token by token: precision
                                                 and recall of students of the any_order teacher (lesson 08)
    python -m kdlearn.experiments.sequence_kd    teacher-written data: hard labels, word-level KD, sequence-level
                                                 KD and a verifier-filtered sampled set (lesson 09)
    python -m kdlearn.experiments.on_policy      GKD's lambda: off-policy against on-policy distillation
                                                 at equal updates and equal wall time (lesson 10)
"""
