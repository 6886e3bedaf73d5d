"""The performance harness of issue 11 (``python bench/run.py``): every figure of one table,
measured in one run with rounds interleaved across configurations.

Modules:

* ``sizes``: the sizes of a full run and of ``--quick``, and the run's shared context;
* ``servers``: the processes under test (``kling-hooks serve``, the ceiling, the peer) and the
  local sink, each started, checked and stopped;
* ``sink``: the sink process (result files, a 1 GiB stream, Slack and webhook endpoints);
* ``noop_plugin``: the no-op plugin of the fan-out figures (a ``--plugins-dir`` file);
* ``peer``: the ``webhook`` peer's configuration;
* ``loads``: one wrk run against a running server, and its figures;
* ``ingest``, ``fanout``, ``status``, ``footprint``: the figure groups, one job per
  configuration and round;
* ``table``: medians, spreads, ratios and the markdown table; ``targets``: the issue's
  targets, PASS or MISS; ``notes``: what is printed under the table.
"""
