"""agent/static/chat.html, read with the standard library's HTML parser: the two placeholders
the server fills, what the patient must be told, nothing loaded from another origin, message
text never parsed as HTML, a labelled input, and a Content-Security-Policy whose hashes match
the inline script and style."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

import agent

PAGE = Path(agent.__file__).parent / "static" / "chat.html"
RAW = PAGE.read_text(encoding="utf-8")

# Attributes that make a browser fetch or navigate somewhere.
URL_ATTRIBUTES = {
    "action", "background", "cite", "data", "formaction", "href", "icon", "manifest",
    "ping", "poster", "src", "srcset", "xlink:href",
}  # fmt: skip
# A URL with a scheme (https:, data:, javascript:) or a protocol-relative one (//host).
ELSEWHERE = re.compile(r"^\s*([a-z][a-z0-9+.-]*:|//|\\\\)", re.IGNORECASE)


class Page(HTMLParser):
    """The page's tags, its visible text (outside script and style), and its script and style
    text exactly as the browser hashes it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._raw: list[str] | None = None  # inside script or style

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))
        if tag in ("script", "style"):
            self._raw = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._raw is not None:
            (self.scripts if tag == "script" else self.styles).append("".join(self._raw))
            self._raw = None

    def handle_data(self, data: str) -> None:
        if self._raw is not None:
            self._raw.append(data)
        else:
            self.text.append(data)

    def by_id(self, element_id: str) -> tuple[str, dict[str, str]]:
        [found] = [(t, a) for t, a in self.tags if a.get("id") == element_id]
        return found

    def visible_text(self) -> str:
        return " ".join("".join(self.text).split())


@pytest.fixture(scope="module")
def page() -> Page:
    parsed = Page()
    parsed.feed(RAW)
    parsed.close()
    return parsed


def test_placeholders_appear_once_each_in_text(page: Page) -> None:
    """The server fills them HTML-escaped, which is safe in text and nowhere else."""
    assert sorted(re.findall(r"\{\{.*?\}\}", RAW)) == ["{{CLINIC}}", "{{MODEL}}"]
    text = " ".join(page.text)
    assert text.count("{{CLINIC}}") == 1 and text.count("{{MODEL}}") == 1
    assert not any("{{" in value for _, attrs in page.tags for value in attrs.values())


def test_says_it_is_an_automated_assistant_and_which_model_answers(page: Page) -> None:
    text = page.visible_text()
    assert "You are talking to an automated assistant, not a person." in text
    assert "Its answers come from {{MODEL}}." in text
    assert text.index("You are talking to") < text.index("Your message")  # at the top


def test_says_to_call_emergency_services_and_that_a_person_can_take_over(page: Page) -> None:
    text = page.visible_text()
    assert "In an emergency, call 911" in text
    assert "A person can take over at any time" in text


def test_nothing_is_loaded_from_another_origin(page: Page) -> None:
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            if name in URL_ATTRIBUTES:
                assert not ELSEWHERE.match(value), f"<{tag} {name}={value!r}>"
        assert not (tag == "script" and "src" in attrs), "the script is inline"
        assert tag not in ("link", "iframe", "img", "object", "embed", "base")
    for code in page.scripts + page.styles:
        assert not re.search(r"https?:|[\"'`]//", code)
    for css in page.styles:
        assert "url(" not in css and "@import" not in css


def test_message_text_is_never_parsed_as_html(page: Page) -> None:
    [script] = page.scripts
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    assert "textContent" in script


def test_the_input_has_a_label(page: Page) -> None:
    fields = [(t, a) for t, a in page.tags if t in ("textarea", "input", "select")]
    assert [t for t, _ in fields] == ["textarea"]
    field_id = fields[0][1]["id"]
    assert ("label", {"for": field_id}) in page.tags
    assert "Your message" in page.visible_text()


def test_phone_ready_and_accessible(page: Page) -> None:
    metas = [a for t, a in page.tags if t == "meta"]
    assert {"name": "viewport", "content": "width=device-width, initial-scale=1"} in metas
    assert ("html", {"lang": "en"}) in page.tags
    assert page.by_id("messages")[1]["aria-live"] == "polite"
    assert page.by_id("error")[1]["role"] == "alert"
    [style] = page.styles
    assert ":focus-visible" in style
    assert "min-height: 3rem" in style  # 48 px tap targets


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_content_security_policy_allows_only_this_script_and_style(page: Page) -> None:
    """Should the server's escaping ever fail, an injected script still does not run, and
    nothing the page holds can be sent to another origin. After editing the script or the
    style, put the digests this test prints into the policy."""
    [policy] = [
        a["content"]
        for t, a in page.tags
        if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    ]
    [script], [style] = page.scripts, page.styles
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert directives["form-action"] == "'none'"  # the patient's text never goes in a URL
    assert directives["script-src"] == _digest(script), f"script-src {_digest(script)}"
    assert directives["style-src"] == _digest(style), f"style-src {_digest(style)}"
    assert "style=" not in RAW  # a style attribute would need 'unsafe-inline'
