"""The documentation's links: every relative link of README.md and docs/*.md reaches a file of the repository and,
when it names one, a heading of that page (by GitHub's anchor rules); every docs page is linked from the README."""
import glob
import os
import re

import pytest
from helpers import REPO, doc_text

DOCS = sorted(os.path.relpath(path, REPO) for path in glob.glob(os.path.join(REPO, "docs", "*.md")))
PAGES = ["README.md", *DOCS]
FENCED_BLOCK = re.compile(r"^```.*?^```", flags=re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", flags=re.M)


def prose(text):
    """The page without its code blocks: a `# comment` there is no heading, `a[b](c)` there no link."""
    return FENCED_BLOCK.sub("", text)


def github_anchor(heading):
    """GitHub's anchor of a heading: lowercase, everything but letters, digits, '_', '-' and spaces dropped, each
    space a '-'."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(page):
    """Every anchor of a page; a repeated heading gets '-1', '-2', ... as on GitHub."""
    found = set()
    for heading in HEADING.findall(prose(doc_text(page))):
        anchor = github_anchor(heading)
        repeat = 0
        while (anchor if repeat == 0 else f"{anchor}-{repeat}") in found:
            repeat += 1
        found.add(anchor if repeat == 0 else f"{anchor}-{repeat}")
    return found


def local_links(page):
    """The targets of the page's links that point into the repository (not to a web address)."""
    text = INLINE_CODE.sub("", prose(doc_text(page)))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def broken(page, target):
    """Why ``target``, linked from ``page``, leads nowhere; None when it resolves."""
    path, _, anchor = target.partition("#")
    linked = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    if not os.path.exists(os.path.join(REPO, linked)):
        return f"{target}: {linked} does not exist"
    if anchor and linked.endswith(".md") and anchor not in anchors(linked):
        return f"{target}: {linked} has no heading with the anchor #{anchor}"
    return None


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_reaches_a_file_and_its_heading(page):
    problems = [problem for problem in (broken(page, target) for target in local_links(page)) if problem]
    assert problems == [], f"{page}: " + "; ".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {os.path.normpath(target.partition("#")[0]) for target in local_links("README.md")}
    assert [page for page in DOCS if page not in linked] == []


@pytest.mark.parametrize("heading, anchor", [
    ("Train and evaluate on the paper's datasets", "train-and-evaluate-on-the-papers-datasets"),
    ("`FeatureExtractor`: features in Python", "featureextractor-features-in-python"),
    ("Tracking with MDPR embeddings (BoxMOT)", "tracking-with-mdpr-embeddings-boxmot"),
    ("What is checked, and when", "what-is-checked-and-when"),
    ("snake_case and a dash - kept", "snake_case-and-a-dash---kept"),
])
def test_anchors_follow_github_s_rules(heading, anchor):
    assert github_anchor(heading) == anchor
