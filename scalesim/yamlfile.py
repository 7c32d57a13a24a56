"""Reading a YAML file that may be hostile: plain data or one clear error, and never a surprise.

Scenario files come from users and travel between them, so reading one must not run code, hang,
exhaust memory or write anything, whatever it holds. PyYAML's safe loader already builds plain data
only (a ``!!python/object/apply:os.system`` or a custom ``!tag`` is refused, never run); this module
adds what it lacks:

* only a regular file is read (a directory, ``/dev/zero`` or a pipe is refused before any read), and
  only up to a size limit;
* UTF-8 text only: a binary file is called one, not shown as a decoding traceback;
* what anchors and aliases expand to is counted on the composed node graph, before any object is
  built, so a "billion laughs" file (nine aliases of nine aliases of ...) is refused at once, and
  an alias inside the node it names (a cycle) is refused too;
* nesting depth is limited (PyYAML's composer recurses, and so would every reader of the data);
* a key given twice in one mapping is an error, where the safe loader silently keeps the last;
* ``1e308`` is a number, as in YAML 1.2 and JSON (PyYAML's YAML 1.1 rules need ``1.0e+308``), so
  that a number is judged as a number and not refused as a string.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


class YamlFileError(ValueError):
    """A file that could not be read as YAML data; the message names the file and says why, in one line."""


@dataclass(frozen=True, kw_only=True)
class YamlLimits:
    """What a scenario-sized YAML file may hold; far above any real one, far below a machine's limits."""

    max_bytes: int = 100_000       # a stage file is about 2 kB
    max_values: int = 100_000      # scalars and collections, counting every alias's expansion
    max_depth: int = 64


_MERGE_TAG = "tag:yaml.org,2002:merge"
# YAML 1.2 floats without a dot or with an unsigned exponent: 1e308, 2E-3, 1.5e3
_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """The safe loader, plus the checks above (set `limits` before loading)."""

    limits = YamlLimits()

    def construct_document(self, node: Node) -> Any:
        _check_expansion(node, self.limits)
        return super().construct_document(node)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:  # type: ignore[override]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise ConstructorError(None, None, f"key {_shown(key)} appears twice in one mapping",
                                       key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT, list("-+0123456789"))


def _shown(value: Any, *, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _check_expansion(root: Node, limits: YamlLimits) -> None:
    """Count the values the node graph stands for, each alias expanded, without expanding anything."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in open_nodes:
            raise ConstructorError(None, None, "an alias refers to a node that contains it", node.start_mark)
        if depth > limits.max_depth:
            raise ConstructorError(None, None, f"nested more than {limits.max_depth} levels deep", node.start_mark)
        total = 1
        if isinstance(node, SequenceNode | MappingNode):
            open_nodes.add(id(node))
            children = node.value if isinstance(node, SequenceNode) else [part for pair in node.value
                                                                              for part in pair]
            for child in children:
                total += size(child, depth + 1)
                if total > limits.max_values:
                    raise ConstructorError(None, None, f"holds more than {limits.max_values:,} values, each alias "
                                           "counted as what it repeats (aliases of aliases: a \"billion laughs\" "
                                           "file?)", node.start_mark)
            open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root, 0)


def read_yaml_file(path: Path, *, limits: YamlLimits | None = None) -> Any:
    """The data of one YAML document in `path`; `YamlFileError` with a one-line reason otherwise."""
    limits = limits or YamlLimits()
    try:
        info = path.stat()
    except FileNotFoundError:
        raise YamlFileError(f"{path}: cannot read: no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise YamlFileError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise YamlFileError(f"{path}: is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise YamlFileError(f"{path}: is not a regular file")
    if info.st_size > limits.max_bytes:
        raise YamlFileError(f"{path}: is {info.st_size:,} bytes, more than the {limits.max_bytes:,} a file of this "
                            "kind may have")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limits.max_bytes + 1)
    except OSError as exc:
        raise YamlFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > limits.max_bytes:
        raise YamlFileError(f"{path}: is more than {limits.max_bytes:,} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise YamlFileError(f"{path}: is not a UTF-8 text file (byte 0x{raw[exc.start]:02x} at offset "
                            f"{exc.start})") from None
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        loader.limits = limits
        return loader.get_single_data()
    except yaml.reader.ReaderError as exc:  # a control character, say: found before any parsing
        line = text.count("\n", 0, exc.position) + 1
        raise YamlFileError(f"{path}: not valid YAML (line {line}): the character {chr(exc.character)!r} is not "
                            "allowed in YAML text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or "malformed YAML").split())
        tag = re.fullmatch(r"could not determine a constructor for the tag '(.*)'", problem)
        if tag is not None:
            problem = f"the tag {tag.group(1)!r} is not allowed: the file may hold plain data only"
        context = getattr(exc, "context", None)
        if context:
            problem = f"{' '.join(str(context).split())}, {problem}"
        raise YamlFileError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise YamlFileError(f"{path}: not valid YAML: nested more than {limits.max_depth} levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()
