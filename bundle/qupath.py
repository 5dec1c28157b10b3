"""QuPath-exported GeoJSON as instance labels: the annotations a pathologist draws in QuPath,
rasterised under the same rules as Aperio XML (:func:`bundle.data.rasterise_nuclei`)."""

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from bundle.data import DataFileError, Ring, rasterise_nuclei, usable_ring

#: QuPath coordinates put pixel (0, 0)'s top-left corner at (0, 0), so its centre is at 0.5.
QUPATH_ORIGIN = 0.5
GEOJSON_SUFFIXES = (".geojson",)


def _features(content: Any) -> list[dict]:
    """The features of a FeatureCollection, a list of features (QuPath's default export), a single
    feature, or a bare geometry."""
    if isinstance(content, dict) and content.get("type") == "FeatureCollection":
        return list(content.get("features") or [])
    if isinstance(content, list):
        return content
    if isinstance(content, dict) and content.get("type") == "Feature":
        return [content]
    if isinstance(content, dict) and "coordinates" in content:
        return [{"type": "Feature", "geometry": content}]
    return []


def _geometry(feature: Any) -> dict | None:
    """A feature's nucleus outline: QuPath cells carry it as ``nucleusGeometry``, other objects as ``geometry``."""
    if not isinstance(feature, dict):
        return None
    geometry = feature.get("nucleusGeometry") or feature.get("geometry")
    return geometry if isinstance(geometry, dict) else None


def _polygon(rings: Any) -> tuple[Ring, list[Ring]] | None:
    """A GeoJSON polygon (exterior ring, then holes) in pixel-centre coordinates, or None when unusable."""
    if not isinstance(rings, list) or not rings:
        return None
    usable = [usable_ring(ring) for ring in rings]
    if any(ring is None for ring in usable):
        return None
    exterior, *holes = [ring - QUPATH_ORIGIN for ring in usable]
    return exterior, holes


def _nucleus(feature: Any) -> list[tuple[Ring, list[Ring]]] | None:
    geometry = _geometry(feature)
    kind = geometry.get("type") if geometry else None
    if kind == "Polygon":
        polygons = [_polygon(geometry.get("coordinates"))]
    elif kind == "MultiPolygon" and isinstance(geometry.get("coordinates"), list):
        polygons = [_polygon(part) for part in geometry["coordinates"]]
    else:  # points, lines, missing geometry: not an outline
        return None
    return None if not polygons or any(p is None for p in polygons) else polygons


def read_qupath_geojson(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a QuPath GeoJSON export into an ``(H, W)`` int32 instance label map.

    Each feature (annotation, detection, or cell: its ``nucleusGeometry``) whose geometry is a
    Polygon or MultiPolygon is one nucleus; holes are left out; ids 1..N in file order.
    Features that are not polygons, or have rings with fewer than 3 vertices or bad
    coordinates, are skipped, and so are oversized ones, with one warning per file naming
    each count (see :func:`bundle.data.read_aperio_xml` for the shared rules).

    Raises:
        DataFileError: empty, unreadable or malformed JSON (with line and column), or JSON
            that holds no GeoJSON features.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DataFileError(path, f"cannot read: {error}") from error
    if not text.strip():
        raise DataFileError(path, "empty file (0 bytes)" if not text else "empty file (whitespace only)")
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFileError(
            path, f"malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from error
    features = _features(content)
    if not features and not (isinstance(content, dict) and content.get("type") == "FeatureCollection"):
        raise DataFileError(
            path, "not GeoJSON: expected a FeatureCollection, a list of features, a feature or a geometry"
        )
    return rasterise_nuclei(path, [_nucleus(feature) for feature in features], shape)
