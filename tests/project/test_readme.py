"""The README's config reference and commands stay in step with the code."""

from pathlib import Path

from pydantic import BaseModel

from byzlab.orchestrator.config import ExperimentConfig

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _field_paths(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _field_paths(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_every_config_field_is_documented():
    missing = [path for path in _field_paths(ExperimentConfig) if f"`{path}`" not in README]
    assert not missing, f"README config reference lacks {missing}"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if "pytest" in line)
    assert f"```bash\n{command}\n```" in README
