"""The experiment configuration: its schema and run id (``schema``), and reading it (``loading``)."""

from byzlab.orchestrator.config.loading import (
    apply_override,
    build_config,
    flatten,
    format_validation_error,
    load_config,
    read_yaml,
    set_dotted,
)
from byzlab.orchestrator.config.schema import (
    ClientsConfig,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    PartitionConfig,
    ProxyDataConfig,
    PublicDataConfig,
    RunConfig,
    ServerConfig,
    ThreatConfig,
    TrackingConfig,
    malicious_count,
    run_id,
)

__all__ = [
    "ClientsConfig", "DataConfig", "ExperimentConfig", "ModelConfig",
    "PartitionConfig", "ProxyDataConfig", "PublicDataConfig", "RunConfig", "ServerConfig", "ThreatConfig",
    "TrackingConfig", "apply_override", "build_config", "flatten", "format_validation_error", "load_config",
    "malicious_count", "read_yaml", "run_id", "set_dotted",
]
