"""cluster.yaml: Ray's own validation for the pinned Ray version (offline: defaults are merged from
the YAML shipped in the wheel, no AWS call), plus the properties docs/cluster.md promises about it."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            out[name.strip().lower()] = version.strip()
    return out


def laion_clap_pin() -> str:
    match = re.search(r"^LAION_CLAP \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert match, "Makefile no longer pins laion-clap; update cluster.yaml's setup with it"
    return f'--no-deps "{match.group(1)}"'


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def test_ray_validates_the_cluster_config(prepared, raw):
    import ray

    assert prepared["provider"]["type"] == "aws"
    assert pins()["ray"] == ray.__version__, "cluster.yaml is validated by the pinned Ray; ray up must use it too"
    # fillout merged Ray's AWS defaults without replacing ours
    assert prepared["head_start_ray_commands"] == raw["head_start_ray_commands"]
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


@pytest.mark.parametrize("breakage, message", [
    (lambda c: c.update(head_node_type="nope"), "head_node_type"),
    (lambda c: c["available_node_types"]["gpu_1x_spot"].update(min_workers=99), "max_workers"),
    (lambda c: c.update(unknown_top_level_key=1), "unknown_top_level_key"),
    (lambda c: c["available_node_types"]["gpu_4x"].update(resources="four"), "four"),
])
def test_validation_rejects_broken_configs(raw, breakage, message):
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(raw)
    breakage(broken)
    with pytest.raises(Exception, match=message):
        validate_config(prepare_config(broken))


def test_no_port_is_open_to_the_world(raw):
    # A node type without SecurityGroupIds makes `ray up` create Ray's default group, whose SSH rule
    # is 0.0.0.0/0; naming the user's group on every type prevents that.
    for name, node_type in raw["available_node_types"].items():
        assert node_type["node_config"].get("SecurityGroupIds"), f"{name} would get Ray's world-open SSH group"
    assert "security_group" not in raw["provider"]
    assert "0.0.0.0/0" not in yaml.safe_dump(raw)  # no rule anywhere in the values (comments aside)
    assert "use_internal_ips" not in raw["provider"]  # SSH from the user's CIDR reaches the head's public IP


def test_token_auth_on_every_node_and_the_token_is_shipped(raw):
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    for line in (c for c in starts if "ray start" in c):
        assert "RAY_AUTH_MODE=token ray start" in line, line
    assert any("export RAY_AUTH_MODE=token" in c for c in raw["initialization_commands"])
    assert raw["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--ray-client-server-port" not in head_start and "--dashboard-port" not in head_start


def test_node_types_cover_cpu_single_and_multi_gpu(raw):
    types = raw["available_node_types"]
    workers = {k: v for k, v in types.items() if k != raw["head_node_type"]}
    assert all(v["min_workers"] == 0 for v in workers.values())  # nothing runs (or costs) while idle
    instance = {k: v["node_config"]["InstanceType"] for k, v in workers.items()}
    assert instance["gpu_1x_spot"] == "g5.xlarge" and instance["gpu_4x"] == "g5.12xlarge"
    assert instance["cpu_spot"].startswith("c")
    assert {k for k, v in workers.items() if v["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"} \
        == {"cpu_spot", "gpu_1x_spot"}
    assert types["head"]["resources"] == {"CPU": 0}
    assert sum(v["max_workers"] for v in workers.values()) >= raw["max_workers"]
    for name, node_type in types.items():
        arn = node_type["node_config"]["IamInstanceProfile"]["Arn"]
        assert arn.endswith("instance-profile/avs-ray-head" if name == "head" else "instance-profile/avs-ray-worker")


def test_setup_installs_the_pinned_versions(raw):
    pinned = pins()
    head, workers = " ".join(raw["head_setup_commands"]), " ".join(raw["worker_setup_commands"])
    for commands in (head, workers):
        assert f'"torch=={pinned["torch"]}"' in commands
        assert '-c ~/avs/constraints.txt -e "$HOME/avs[openl3,clap,clamp]"' in commands
        assert laion_clap_pin() in commands  # the Makefile's --no-deps install, same version
    assert "download.pytorch.org/whl/cpu" in head and "download.pytorch.org" not in workers  # CUDA wheel from PyPI
    assert re.search(r"uv venv --seed --python 3\.11 ", " ".join(raw["setup_commands"]))
    assert raw["file_mounts"]["/home/ubuntu/avs"] == "." and ".gitignore" in raw["rsync_filter"]
