"""One-line input errors for ``python -m ray_jobs.pretrain`` (exit status 2, no traceback).

Hydra reports a bad override itself, over several lines and with exit status 1, before the job's
code runs. ``check_overrides`` composes the command line's config once beforehand with Hydra's own
parser and composer, so the same mistakes come out as one line naming the key (or config file)
and what was wrong; the job's own input errors (dataset, splits, value ranges) go through
``one_line``.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_MODULE = "ray_jobs.pretrain.configs"
CONFIG_DIR = Path(__file__).parent / "configs"


class InputError(ValueError):
    """The command line cannot make a config; the message is one line."""


def input_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input (reported in one line, exit 2); anything else is a bug."""
    from embedders.dataset import InfoCsvError
    from ray_jobs.pretrain.config import PretrainConfigError

    return (PretrainConfigError, InfoCsvError, InputError)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line: its first line, then any listed problems joined by '; '."""
    lines = [line.strip().lstrip("- ").strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {'; '.join(lines[1:])}"


def _config_files() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _describe(exc: Exception, config_name: str) -> str:
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    where = f"{CONFIG_DIR.relative_to(CONFIG_DIR.parents[2])}/{config_name}.yaml"
    if isinstance(exc, MissingConfigException):
        return f"--config-name={config_name}: no such config in {CONFIG_DIR.relative_to(CONFIG_DIR.parents[2])} " \
               f"(there: {', '.join(_config_files())})"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the override: {one_line(exc)} (overrides are KEY=VALUE, e.g. train.epochs=20)"
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
        parent, _, leaf = key.rpartition(".")
        known = _known_keys(config_name, parent)
        return f"unknown config key {key!r}" + (f"; {parent or 'the top level'} has {', '.join(known)}" if known else "") \
            + f" ({where})"
    message = (getattr(cause, "msg", None) or one_line(cause)).splitlines()[0]
    return f"{key}: {message} ({where})" if key else f"{one_line(exc)} ({where})"


def _known_keys(config_name: str, parent: str) -> list[str]:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import DictConfig, OmegaConf

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            node = compose(config_name=config_name)
        node = OmegaConf.select(node, parent) if parent else node
        return sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []
    finally:
        GlobalHydra.instance().clear()


def check_overrides(argv: list[str]) -> None:
    """Compose the config that ``argv`` asks for; raise InputError in one line when Hydra cannot.

    Command lines that are not a plain run (``--help``, ``--info``, shell completion, another
    config folder) are left to Hydra.
    """
    from hydra import compose, initialize_config_module
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.shell_completion or args.info or args.config_dir or args.config_path:
        return
    name = args.config_name or "config"
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            compose(config_name=name, overrides=list(args.overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise InputError(_describe(exc, name)) from None
    finally:
        GlobalHydra.instance().clear()
