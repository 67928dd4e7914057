"""The Flower apps a federated run loads: `server_app` and `client_app`, with names resolved.

Flower loads apps by module path (``nas.app.federated_apps:server_app``); `resolve` turns a
spec's space and dataset names into objects (only `nas.app` looks names up), cached per process
so the in-process grid loads the data once.
"""

from __future__ import annotations

import json
from functools import lru_cache

import search_spaces
from nas.data import ImageDataset, load_dataset
from nas.federated import (
    FederatedSpec,
    SubModelFamily,
    SupernetFamily,
    WidthFamily,
    make_client_app,
    make_server_app,
)

__all__ = ["client_app", "resolve", "server_app"]


@lru_cache(maxsize=4)
def _resolved(
    space: str, kind: str, base_arch: str, dataset: str, options: str
) -> tuple[SubModelFamily, ImageDataset]:
    # clients' partitions index the pooled images by source: data held in memory
    data = load_dataset(dataset, stream=False, **json.loads(options))
    assert isinstance(data, ImageDataset)
    the_space = search_spaces.get_space(space, num_classes=data.num_classes)
    family: SubModelFamily
    if kind == "width":
        family = WidthFamily(the_space, json.loads(base_arch))
    else:
        family = SupernetFamily(the_space)
    return family, data


def resolve(spec: FederatedSpec) -> tuple[SubModelFamily, ImageDataset]:
    """The sub-model family and dataset that `spec` names."""
    return _resolved(
        spec.space,
        spec.kind,
        json.dumps(spec.base_arch, sort_keys=True),
        spec.dataset,
        json.dumps(dict(spec.dataset_options), sort_keys=True),
    )


server_app = make_server_app(resolve)
client_app = make_client_app(resolve)
