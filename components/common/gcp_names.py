"""The forms of the Google Cloud resource names a project's rules give the stages: a Cloud
KMS key (customer-managed encryption) and a VPC network, checked before a job is created
with them, so that a mistyped name fails at once with the form it should have rather than
later in the job's own error."""

from __future__ import annotations

import re

_KMS_KEY = re.compile(r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+")
# Vertex AI peers with a network named by its project's number, not its ID.
_NETWORK = re.compile(r"projects/\d+/global/networks/[^/]+")


def kms_key_name(name: str) -> str:
    """``name`` stripped, checked to be a Cloud KMS key's resource name or empty.

    Args:
        name: ``projects/P/locations/L/keyRings/R/cryptoKeys/K``, or empty for none
            (Google-managed encryption).

    Returns:
        The name without surrounding blanks; empty for none.

    Raises:
        ValueError: for anything else, e.g. a key version (``.../cryptoKeyVersions/N``)
            or a key ring.
    """
    name = name.strip()
    if name and not _KMS_KEY.fullmatch(name):
        raise ValueError(
            f"a Cloud KMS key is named projects/P/locations/L/keyRings/R/cryptoKeys/K, got {name!r}"
        )
    return name


def vpc_network(name: str) -> str:
    """``name`` stripped, checked to be a VPC network's full name as Vertex AI takes it
    or empty.

    Args:
        name: ``projects/<project number>/global/networks/<name>``, or empty for none.

    Returns:
        The name without surrounding blanks; empty for none.

    Raises:
        ValueError: for anything else, e.g. a network's short name or one named by the
            project's ID instead of its number.
    """
    name = name.strip()
    if name and not _NETWORK.fullmatch(name):
        raise ValueError(
            "Vertex AI takes a VPC network as projects/<project number>/global/networks/"
            f"<name> (the number, not the project ID), got {name!r}"
        )
    return name
