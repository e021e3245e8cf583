"""Deployment settings: one model read by the CLI, the service and the workspace.

Sources, each overriding the one before: defaults, the YAML file named by UNISUP_CONFIG,
UNISUP_* environment variables, then explicit values (CLI flags). CLI options take their help
from the field descriptions here, so a setting is described once.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from pipelines.ray_data import RayDataConfig
from pipelines.workspace import (
    DEFAULT_REPO,
    OFFLINE_STORES,
    ConfigError,
    Workspace,
    masked,
    offline_store_config,
    online_store_config,
)

ENV_PREFIX = "UNISUP_"
FILE_ENV = "UNISUP_CONFIG"
EncoderRuntime = Literal["torch", "onnx", "openvino"]  # pipelines/modeling/runtime.py runs the last two
ENCODER_RUNTIMES: tuple[str, ...] = get_args(EncoderRuntime)


def _ray_help(name: str) -> str:
    """A ray_* setting's description: its RayDataConfig field's help, stated once there."""
    spec = next(f for f in fields(RayDataConfig) if f.name == name)
    return f"Ray engine's producer passes (signals build): {spec.metadata['help']}"


def available_cores() -> int:
    """The one default for thread counts: every core this process may run on."""
    return len(os.sched_getaffinity(0))


class Settings(BaseSettings):
    """Where a deployment keeps its state, its online store, and how hard it may use the machine."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    workspace: Path = Field(Path("workspace"), description="Workspace dir (lake, signal tables, registry, models)")
    online: str = Field("sqlite", description="Online store: 'sqlite', redis://[USER:PASSWORD@]HOST:PORT/DB, "
                                              "rediss://... (TLS), redis+cluster://HOST:PORT[,HOST:PORT...] or "
                                              "rediss+cluster://... (Redis Cluster)")
    repo: Path = Field(DEFAULT_REPO, description="Feature repo dir (the signal registry and services)")
    offline: str = Field("duckdb", description=f"Offline store and batch engine of apply, materialize, dataset "
                                               f"build and signals build: {' | '.join(OFFLINE_STORES)} (ray: Feast's "
                                               f"Ray store and engine on a local Ray the command starts; "
                                               f"ray:HOST:PORT, ray:auto: join a running Ray cluster)")
    threads: PositiveInt = Field(default_factory=available_cores,
                                 description="torch threads of training and batch inference (default: all cores)")
    index: Path | None = Field(None, description="Index dir to serve (default: the newest in WORKSPACE/indexes)")
    model_dir: Path | None = Field(None, description="Model dir to serve (default: the index's model version)")
    ranker: str = Field("ranker", description="Ranker /search serves (WORKSPACE/models/rankers/NAME[@VARIANT])")
    preranker: str | None = Field(None, description="Pre-ranker /search runs between retrieval and the ranker "
                                                    "(WORKSPACE/models/prerankers/NAME; default none: the ranker "
                                                    "scores the fusion's top n)")
    prerank_budget: float = Field(0.2, ge=0.0, le=1.0, description="Share of the pre-ranker's retrieved "
                                                                    "candidates its strong model re-scores")
    workers: PositiveInt = Field(2, description="Service processes, each with its own encoder and index "
                                                "(a request is mostly Python, so one process uses about one core)")
    torch_threads: PositiveInt | None = Field(None, description="Encoder threads per service process "
                                                                "(default: THREADS / WORKERS, at least 1)")
    encoder_runtime: EncoderRuntime = Field(
        "onnx", description="What runs the encoder for serving and catalog encoding: onnx (ONNX Runtime, float32; "
                            "p50 2.6 ms a query vs torch's 4.4), openvino (float32) or torch, the first two on an "
                            "ONNX export of the same weights cached in WORKSPACE/cache/encoders whose vectors match "
                            "torch float32 (the gate of benchmarks/bench_encoder.py), so caches and indexes keep the "
                            "weights' fingerprint")
    lanes: PositiveInt = Field(2, description="Batches (encode + search) a service process runs at once, "
                                              "each on its own thread (serving/batcher.py)")
    online_timeout: PositiveFloat = Field(0.5, description="Seconds an online read may take before an "
                                                           "answer degrades")
    store_check_seconds: PositiveFloat = Field(2.0, description="Seconds between a service process's checks "
                                                                "of the online store's materialization watermark "
                                                                "(missing or stale views)")
    admin_reload: bool = Field(False, description="Enable POST /admin/reload (loopback clients only): load an "
                                                  "index / ranker beside the serving ones and switch to them")
    ray_actors: PositiveInt = Field(RayDataConfig.actors, description=_ray_help("actors"))
    ray_cpus_per_actor: PositiveFloat = Field(RayDataConfig.cpus_per_actor, description=_ray_help("cpus_per_actor"))
    ray_batch_size: PositiveInt = Field(RayDataConfig.batch_size, description=_ray_help("batch_size"))
    ray_min_rows: NonNegativeInt = Field(RayDataConfig.min_rows, description=_ray_help("min_rows"))

    @field_validator("online")
    @classmethod
    def _known_store(cls, value: str) -> str:
        online_store_config(value, Path("."))  # raises ConfigError naming the value
        return value

    @field_validator("offline")
    @classmethod
    def _known_offline(cls, value: str) -> str:
        offline_store_config(value, Path("."))  # raises ConfigError naming the value
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, **unused: PydanticBaseSettingsSource):
        """Flags, then the environment, then the YAML file; no dotenv or secrets directory."""
        sources = [init_settings, env_settings]
        if os.environ.get(FILE_ENV):
            path = Path(os.environ[FILE_ENV])
            if not path.is_file():
                raise ConfigError(f"{FILE_ENV}={path}: no such file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @classmethod
    def load(cls, **values: object) -> Settings:
        """Settings from every source, `values` winning (None means "not given"); one line on a bad value."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            err = exc.errors()[0]
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            value = masked(err["input"]) if name == "online" and isinstance(err.get("input"), str) else err.get("input")
            raise ConfigError(f"setting {name} = {value!r}: {err['msg']} "
                              f"(flag, {ENV_PREFIX}{name.upper()} or {FILE_ENV})") from None

    @property
    def ray_data(self) -> RayDataConfig:
        """The actor pool of the producers' model passes when the engine is Ray (pipelines.ray_data)."""
        return RayDataConfig(actors=self.ray_actors, cpus_per_actor=self.ray_cpus_per_actor,
                             batch_size=self.ray_batch_size, min_rows=self.ray_min_rows)

    @property
    def encoder_threads(self) -> int:
        """Encoder threads per service process: the setting, else this machine's share per worker."""
        return self.torch_threads or max(1, self.threads // self.workers)

    def as_workspace(self) -> Workspace:
        return Workspace(root=self.workspace.resolve(), online=self.online, repo_dir=self.repo.resolve(),
                         offline=self.offline)

    def environment(self) -> dict[str, str]:
        """The settings as UNISUP_* variables, for a child process that loads them again."""
        values = self.model_dump(exclude_none=True)
        return {ENV_PREFIX + k.upper(): str(v) for k, v in values.items()}
