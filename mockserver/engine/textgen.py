"""Readable, deterministic text that answers the prompt's topic.

Not lorem ipsum: the answer picks keywords from the last user message and builds sentences about
them from a small phrase bank, so different prompts read differently and tests can see their input
reflected. All choices come from the request's PRNG.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .rng import RequestRandom

_WORD = re.compile(r"[^\W\d_][\w'-]*", re.UNICODE)
STOPWORDS = frozenset(
    ["a", "about", "above", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "let", "me", "more", "most", "my", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "out", "over", "own", "please", "same", "she", "should", "so", "some", "such", "tell", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "give", "show", "explain", "write", "make", "describe", "say", "work", "works", "working", "use", "using", "used", "get", "like", "want", "need", "know", "help", "best", "good", "way", "ways", "thing", "things", "much", "many", "json", "answer", "respond", "reply", "format", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "few", "several", "list", "short", "brief", "quick", "paragraph", "paragraphs", "sentence", "sentences", "tips", "ideas", "examples", "steps", "points"]  # noqa: E501 (data)
)

_OPENERS = (
    "Here is a short answer about {t}.",
    "Good question about {t}.",
    "Let's look at {t} step by step.",
    "In short, {t} comes down to a few ideas.",
    "Sure. Here is how I would think about {t}.",
    "There are a couple of things worth knowing about {t}.",
)
_SENTENCES = (
    "The key point about {k} is that {claim}.",
    "When it comes to {k}, {claim}.",
    "In practice, {claim}.",
    "A practical approach is to {action} and then {action2}.",
    "One common pitfall with {k} is to {mistake}.",
    "It also helps to {action} before you {action2}.",
    "Keep in mind that {claim}.",
    "For {k}, a good first step is to {action}.",
)
_CLAIMS = (
    "small, well-defined steps beat one large leap",
    "clarity matters more than cleverness",
    "the simplest explanation is usually the right place to start",
    "measuring before changing anything saves time",
    "the details depend on the context you are working in",
    "consistency tends to matter more than speed",
    "the trade-offs are easier to see with a concrete example",
    "most of the value comes from the first few changes",
)
_ACTIONS = (
    "write down what you already know",
    "start with a small example",
    "check your assumptions",
    "compare two or three options side by side",
    "break the problem into parts",
    "look at what changed most recently",
    "ask what the result should look like",
    "test the idea on real data",
)
_MISTAKES = (
    "skip the basics",
    "optimize too early",
    "change several things at once",
    "ignore the edge cases",
    "rely on a single source",
)
_CLOSERS = (
    "I hope that helps.",
    "Let me know if you want more detail on {k}.",
    "That should give you a solid starting point.",
    "Happy to go deeper on any of these points.",
)


def keywords(text: str, limit: int = 3) -> list[str]:
    """The first few distinct content words of `text` in order of appearance, as written."""
    seen: dict[str, str] = {}
    for word in _WORD.findall(text):
        word = re.sub(r"'s$", "", word.strip("'-"))
        lowered = word.lower()
        if len(lowered) > 2 and lowered not in STOPWORDS:
            seen.setdefault(lowered, word)
            if len(seen) == limit:
                break
    return list(seen.values())


def proper_names(text: str) -> list[str]:
    """Capitalised names in order of appearance, those opening a sentence last:
    "Is it warm in San Francisco or Lisbon?" -> ["San Francisco", "Lisbon"]."""
    inner: list[str] = []
    opening: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", text):
        words = list(_WORD.finditer(sentence))
        index = 0
        while index < len(words):
            if not _is_name(words[index].group()):
                index += 1
                continue
            start, end, following = words[index].start(), words[index].end(), index + 1
            while (following < len(words) and _is_name(words[following].group())
                   and sentence[end:words[following].start()] == " "):
                end, following = words[following].end(), following + 1
            (opening if index == 0 else inner).append(sentence[start:end])
            index = following
    return list(dict.fromkeys(inner + opening))


def _is_name(word: str) -> bool:
    return word[:1].isupper() and re.sub(r"'s$", "", word.lower()) not in STOPWORDS


def topic_phrase(words: list[str]) -> str:
    """`['cats', 'dogs']` -> `cats and dogs`."""
    if not words:
        return "your request"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def answer(prompt: str, rnd: RequestRandom, sentences: int | None = None) -> str:
    """A paragraph answering `prompt`; 3 to 6 sentences unless `sentences` says how many."""
    words = keywords(prompt)
    topic = topic_phrase(words[:2])
    count = sentences if sentences is not None else rnd.randint(3, 6)

    def fill(template: str) -> str:
        action, action2 = rnd.sample(_ACTIONS, 2)
        return template.format(
            t=topic,
            k=rnd.choice(words) if words else "this",
            claim=rnd.choice(_CLAIMS),
            action=action,
            action2=action2,
            mistake=rnd.choice(_MISTAKES),
        )

    parts = [fill(rnd.choice(_OPENERS))]
    parts += [_capitalize(fill(t)) for t in rnd.sample(_SENTENCES, min(max(count - 2, 0), len(_SENTENCES)))]
    if count > 1:
        parts.append(fill(rnd.choice(_CLOSERS)))
    return " ".join(parts[:count])


def answer_from_results(prompt: str, results: list[tuple[str, str]], rnd: RequestRandom) -> str:
    """The answer after tool calls: what each tool (name, output) returned, then a closing line."""
    words = keywords(prompt)
    parts = [f"Here is what I found about {topic_phrase(words[:2])}."]
    for name, output in results:
        parts.append(_reported(name, output))
    parts.append(rnd.choice(_CLOSERS).format(k=rnd.choice(words) if words else "this"))
    return " ".join(parts)


def _reported(name: str, output: str) -> str:
    """One sentence quoting a tool's output: its fields when it is a JSON object, else its text."""
    try:
        value = json.loads(output)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict) and value:
        fields = [f"{k.replace('_', ' ')} is {_clip(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))}"
                  for k, v in list(value.items())[:8]]
        return f"According to {name}, {', '.join(fields)}."
    text = _clip(output, 300)
    return f'{name} returned "{text}".' if text else f"{name} returned nothing."


def _clip(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rstrip() + "..."


def json_answer(prompt: str, rnd: RequestRandom) -> dict[str, Any]:
    """A JSON object answering `prompt`, for `response_format: json_object`."""
    words = keywords(prompt)
    return {"topic": topic_phrase(words[:2]), "keywords": words, "answer": answer(prompt, rnd, sentences=2)}


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def text_of_content(content: Any) -> str:
    """The text of a message `content`: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "") for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""
