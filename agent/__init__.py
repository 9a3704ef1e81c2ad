"""crystal-agent: the decision-making side (config, campaign, store, surrogates,
acquisition, Ray executor, MLflow tracking, lab adapters, CLI).

Importing this package is cheap; heavy libraries load inside the functions that use them.
"""

__version__ = "0.1.0"
