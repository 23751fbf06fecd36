"""The serving side's state in, a directive for every training job out.

- ``sample``: the one record telemetry hands the law (:class:`Sample`);
- ``telemetry``: the sources that make samples (Prometheus scrape, PromQL, host CPU);
- ``law``: the pure control law, ``decide(state, sample, config) -> (state, directive)``;
- ``shares``: the pooled budget of the jobs beside one serving cluster, divided by priority (pure);
- ``lease``: a job's placement groups on the training pool, grown and shrunk;
- ``governor`` and ``governor_state``: the detached Ray actor that runs it all, and what it saves to survive a restart;
- ``reaction``: statistics of the time from PAUSE to workers released.

``law``, ``shares``, ``sample`` and ``reaction`` import no Ray and no network library.
"""
