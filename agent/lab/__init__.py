"""Lab-robot side of the agent: adapters, a simulated lab, PXRD simulation and identification.

Modules (import what you need; importing this package loads nothing heavy):

* :mod:`agent.lab.base` -- ``LabAdapter`` protocol, request/ticket/status/result types,
  adapter registry (``get_adapter``).
* :mod:`agent.lab.simulated` -- ``SimulatedLab`` on a predicted energy landscape.
* :mod:`agent.lab.pxrd` -- realistic measured PXRD patterns.
* :mod:`agent.lab.identify` -- ``identify(pattern, structures, names)``.
* :mod:`agent.lab.network` / :mod:`agent.lab.server` -- HTTP client and reference robot server.
* :mod:`agent.lab.safety` -- approval queue, daily budget.
* :mod:`agent.lab.feedback` -- identification record + figure for the campaign.
* :mod:`agent.lab.config` -- the ``[lab]`` campaign table and ``build_adapter``.
* :mod:`agent.lab.testing` -- fake clock and bounded polling for tests.
"""
