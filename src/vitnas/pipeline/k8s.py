"""Kubernetes names, labels and quantities checked the way the API server checks them, so a wrong
`--cpu`, `--secret` or `--node-selector` is one line at compile time, not a failed pod an hour into
a run (or kfp's traceback after the compile work)."""

from __future__ import annotations

import re

from vitnas.errors import ConfigError

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
LABEL_VALUE = re.compile(rf"({_NAME})?")
# Kubernetes resource quantities: a decimal number with an optional SI or binary suffix (no sign:
# vitnas never asks for negative resources, and "0" means none before this check).
QUANTITY = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE]\d+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
# An image reference: [registry[:port]/]path[:tag][@digest], the grammar of the distribution spec.
_PATH = r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*"
IMAGE = re.compile(rf"([A-Za-z0-9.-]+(:\d+)?/)?{_PATH}(/{_PATH})*(:[\w][\w.-]{{0,127}})?"
                   r"(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")
TAG = re.compile(r"[\w][\w.-]{0,127}")
# Sane upper bounds: larger values are typos that would only fail on the cluster.
CAPS = {"--gpus": 64, "--proxy-shards": 1024, "--retries": 20, "--nodes": 1024}


def _require(ok: bool, flag: str, value: str, what: str) -> str:
    if not ok:
        raise ConfigError(f"{flag} {value!r}: not {what}")
    return value


def check_dns_subdomain(flag: str, value: str) -> str:
    """Names of secrets, volumes claims and other objects."""
    return _require(len(value) <= 253 and DNS_SUBDOMAIN.fullmatch(value) is not None, flag, value,
                    "a valid Kubernetes name (lower-case letters, digits, '-' and '.', starting and ending with a "
                    "letter or digit, at most 253 characters)")


def check_label_key(flag: str, key: str) -> str:
    """A label key or a qualified name: an optional DNS-subdomain prefix and '/', then a name of at
    most 63 characters (node selectors, taints, resource names such as nvidia.com/gpu)."""
    prefix, slash, name = key.rpartition("/")
    ok = len(name) <= 63 and re.fullmatch(_NAME, name) is not None
    if slash:
        ok = ok and len(prefix) <= 253 and DNS_SUBDOMAIN.fullmatch(prefix) is not None
    return _require(ok, flag, key, "a valid Kubernetes label key ([prefix/]name: the name at most 63 letters, "
                    "digits, '-', '_' or '.', starting and ending with a letter or digit)")


def check_label_value(flag: str, value: str) -> str:
    return _require(len(value) <= 63 and LABEL_VALUE.fullmatch(value) is not None, flag, value,
                    "a valid Kubernetes label value (at most 63 letters, digits, '-', '_' or '.', starting and "
                    "ending with a letter or digit)")


def check_quantity(flag: str, value: str) -> str:
    return _require(QUANTITY.fullmatch(value) is not None, flag, value, "a Kubernetes quantity (e.g. 4, 500m, 16Gi)")


def check_image(flag: str, ref: str) -> str:
    return _require(len(ref) <= 512 and IMAGE.fullmatch(ref) is not None, flag, ref,
                    "a valid image reference ([registry/]repository[:tag][@digest], no spaces or control "
                    "characters)")


def check_tag(flag: str, tag: str) -> str:
    return _require(TAG.fullmatch(tag) is not None, flag, tag,
                    "a valid image tag (letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-')")


def check_count(flag: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= CAPS[flag]:
        raise ConfigError(f"{flag} {value!r}: must be an integer in {low}..{CAPS[flag]}")
    return value
