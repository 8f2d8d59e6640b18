"""Experiments that reproduce a paper's result end to end, each runnable from the command line.

    python -m kdlearn.experiments.hinton         Hinton, Vinyals and Dean 2015: teacher, small net
                                                 from scratch, small net distilled (lessons 02, 03)
    python -m kdlearn.experiments.hinton_tuning  how hinton's digits settings were chosen: a scan on
                                                 the validation split, shipped as hinton_tuning.json
"""
