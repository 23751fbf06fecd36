"""The job spec: YAML in, a validated :class:`JobSpec` out. Every layer reads it, so it sits low.

- ``job``: the spec and its sections (model, data, validation, serving, budget, ...), :func:`load_spec`;
- ``factories``: the estimator classes and model factories a spec names, resolved by import path;
- ``governance``: the checklist, cost and contacts sections;
- ``release``: the release plan section.
"""

__all__ = ["JobSpec", "load_spec", "spec_from_dict"]


def __getattr__(name: str):
    # pydantic is imported when a spec is asked for, not by the trainers' import of runtime.spec.factories
    if name in __all__:
        from runtime.spec import job

        return getattr(job, name)
    raise AttributeError(name)
