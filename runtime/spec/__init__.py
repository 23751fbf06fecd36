"""The job spec: YAML in, a validated :class:`JobSpec` out. Every layer reads it, so it sits low.

- ``job``: the spec and its sections (model, data, validation, serving, budget, ...), :func:`load_spec`;
- ``governance``: the checklist, cost and contacts sections;
- ``release``: the release plan section.
"""

from runtime.spec.job import JobSpec, load_spec, spec_from_dict

__all__ = ["JobSpec", "load_spec", "spec_from_dict"]
