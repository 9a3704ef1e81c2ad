"""crystal-agent physics backends: molecule preparation, CSP, force field, xTB, DFT,
phonons. Every backend implements :class:`sim_backends.base.Backend` and is listed in
:mod:`sim_backends.registry`. Importing this package loads no heavy library.
"""
