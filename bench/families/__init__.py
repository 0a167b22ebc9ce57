"""Generative families. Each module registers itself; adding a family is one file plus one import here."""
from __future__ import annotations

from bench.families.base import FAMILIES, DataSpec, GenerativeModel, Likelihood, register_family

from bench.families import naive_bayes  # noqa: F401,E402  (registers "naive_bayes")
from bench.families import vae  # noqa: F401,E402  (registers "vae")
from bench.families import gan  # noqa: F401,E402  (registers "gan")
from bench.families import flow  # noqa: F401,E402  (registers "flow")
from bench.families import autoregressive  # noqa: F401,E402  (registers "autoregressive")
from bench.families import diffusion  # noqa: F401,E402  (registers "diffusion")
from bench.families import flow_matching  # noqa: F401,E402  (registers "flow_matching")
from bench.families import autoencoder  # noqa: F401,E402  (registers "autoencoder")

__all__ = ["FAMILIES", "DataSpec", "GenerativeModel", "Likelihood", "register_family"]
