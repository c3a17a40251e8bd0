"""Teacher class means (centers): compute (streaming, distributed), save, load, import."""

from ndkd.centers.compute import class_means
from ndkd.centers.official import load_official_json
from ndkd.centers.store import ClassMeans, convert_centers

__all__ = ["ClassMeans", "class_means", "convert_centers", "load_official_json"]
