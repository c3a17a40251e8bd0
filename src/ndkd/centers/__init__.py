"""Teacher class means (centers): compute (streaming, distributed), save, load, import."""

from ndkd.centers.compute import class_means
from ndkd.centers.official import load_official_json
from ndkd.centers.store import ClassMeans

__all__ = ["ClassMeans", "class_means", "load_official_json"]
