"""A report as a list of sections, rendered to HTML (self-contained) and to Markdown alike.

Building the content once and rendering it twice keeps ``report.html`` (for people) and
``report.md`` (for a pull-request comment) saying the same thing. Images are PNG files in the run
folder; the HTML embeds them, so the one file can be mailed or attached as it is.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalesim import __version__


@dataclass(kw_only=True)
class Report:
    title: str
    subtitle: str = ""
    sections: list[dict[str, Any]] = field(default_factory=list)

    def headline(self, cards: list[tuple[str, str, str]]) -> None:
        self.sections.append({"kind": "headline",
                              "cards": [{"label": a, "value": b, "note": c} for a, b, c in cards]})

    def heading(self, text: str) -> None:
        self.sections.append({"kind": "heading", "text": text})

    def text(self, text: str, *, css: str = "") -> None:
        self.sections.append({"kind": "text", "text": text, "css": css})

    def image(self, path: Path, *, alt: str) -> None:
        self.sections.append({"kind": "image", "path": path, "alt": alt})

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.sections.append({"kind": "table", "header": header, "rows": [[str(c) for c in row] for row in rows]})

    def html(self) -> str:
        import jinja2

        environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
            autoescape=jinja2.select_autoescape(["html", "j2"]),
        )
        sections = []
        for section in self.sections:
            if section["kind"] == "image":
                section = {**section, "data": base64.b64encode(Path(section["path"]).read_bytes()).decode()}
            sections.append(section)
        return environment.get_template("report.html.j2").render(
            title=self.title, subtitle=self.subtitle, sections=sections, version=__version__,
            generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))

    def markdown(self) -> str:
        lines = [f"# {self.title}", "", self.subtitle, ""]
        for section in self.sections:
            kind = section["kind"]
            if kind == "headline":
                cards = section["cards"]
                lines += [f"- **{card['label']}: {card['value']}** {card['note']}".rstrip() for card in cards]
                lines.append("")
            elif kind == "heading":
                lines += [f"## {section['text']}", ""]
            elif kind == "text":
                lines += [section["text"], ""]
            elif kind == "image":
                lines += [f"![{section['alt']}]({Path(section['path']).name})", ""]
            elif kind == "table":
                lines.append("| " + " | ".join(section["header"]) + " |")
                lines.append("|" + "|".join("---" for _ in section["header"]) + "|")
                lines += ["| " + " | ".join(row) + " |" for row in section["rows"]]
                lines.append("")
        return "\n".join(lines)

    def write(self, folder: Path, *, stem: str = "report") -> tuple[Path, Path]:
        html_path = folder / f"{stem}.html"
        md_path = folder / f"{stem}.md"
        html_path.write_text(self.html())
        md_path.write_text(self.markdown())
        return html_path, md_path
