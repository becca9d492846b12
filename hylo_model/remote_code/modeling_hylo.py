"""HyLo model for ``trust_remote_code=True`` loading: the code is the installed ``hylo-search`` package's."""

try:
    from hylo_model.model import HyLoForCausalLM as _PackageModel
except ModuleNotFoundError as error:
    if not (error.name or "").startswith("hylo_model"):
        raise
    raise ImportError(
        "this folder holds a HyLo model, whose code comes with the hylo-search package: pip install hylo-search"
    ) from None


class HyLoForCausalLM(_PackageModel):
    """The installed :class:`hylo_model.HyLoForCausalLM`, under the name this folder's ``auto_map`` gives."""
