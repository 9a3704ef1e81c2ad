"""The stages of a campaign behind one protocol (:mod:`agent.stages.base`).

* :mod:`agent.stages.molecule` -- which molecule at which level (multi-fidelity GP);
* :mod:`agent.stages.structure` -- CSP of the best molecules, then the structure levels;
* :mod:`agent.stages.lab` -- crystallisation experiments and observed forms;
* :mod:`agent.stages.costs` -- the cost model every stage uses.

Importing this package is light; each module imports its heavy libraries when used.
"""
