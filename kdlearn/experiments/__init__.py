"""Experiments that reproduce a paper's result end to end, each runnable from the command line.

    python -m kdlearn.experiments.hinton      Hinton, Vinyals and Dean 2015: teacher, small net
                                              from scratch, small net distilled (lesson 02)
"""
