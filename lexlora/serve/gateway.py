"""The gateway's collaborators, built once per app and shared by the route modules."""

from __future__ import annotations

from dataclasses import dataclass

from lexlora.serve.admission import Admission
from lexlora.serve.catalog import Capabilities, TenantCatalog
from lexlora.serve.config import ServeConfig
from lexlora.serve.engines.base import Engine
from lexlora.serve.metrics import Metrics
from lexlora.serve.prompts import PromptEncoder
from lexlora.serve.residency import ResidentAdapters
from lexlora.serve.tenants import KeyDirectory


@dataclass
class Gateway:
    config: ServeConfig
    engine: Engine
    catalog: TenantCatalog
    residency: ResidentAdapters
    admission: Admission
    prompts: PromptEncoder
    keys: KeyDirectory
    metrics: Metrics

    @property
    def capabilities(self) -> Capabilities:
        e = self.engine
        return Capabilities(e.name, e.supports_scale, e.supports_composition)
