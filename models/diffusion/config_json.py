"""The JSON form of a network's architecture, as generator checkpoints store it (unet.json,
network.json): a frozen dataclass of plain fields, read back with unknown keys refused by name."""
import dataclasses
import json
from typing import Any


class JsonConfig:
  """Mixin of a frozen architecture dataclass; `KIND` names it in errors ('UNet', 'SongUNet')."""
  KIND = 'network'

  def to_dict(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()}

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any], *, source: str | None = None):
    """From `to_dict`'s output; an unknown key or a bad value is an error naming the source."""
    source = source or f'{cls.KIND} config'
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'{source}: unknown {cls.KIND} config keys {unknown}; known: '
                       f'{sorted(names)}.')
    try:
      return cls(**d)
    except (TypeError, ValueError) as e:
      raise ValueError(f'{source}: {e}') from None
