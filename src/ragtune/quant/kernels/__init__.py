"""The NF4 decode kernels: C for the CPU (:mod:`.native`, source ``nf4_cpu.c``) and Triton for
CUDA (:mod:`.nf4_triton`).

Each imports the format (:mod:`ragtune.quant.nf4`) and decodes to its eager reference's numbers
bit for bit; which one runs is :mod:`ragtune.quant.dispatch`'s decision.
"""
