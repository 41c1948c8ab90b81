"""End to end with the `openai` SDK: speech is a valid file in each format, transcriptions and
translations are deterministic text from the file in every response format, streamed where OpenAI
streams them."""

from __future__ import annotations

import io
import json
import struct
import wave
import zlib
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mockserver.api.media.audio import _crc
from tests.http import conforms
from tests.openapi import requires_spec, validate_sse_events
from tests.servers import ServerThread

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank"  # 14 words: 5.6 s


@pytest.fixture
def sdk(mock_server: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=mock_server.url + "/v1", api_key="sk-test", max_retries=0) as client:
        yield client


def _speak(client: openai.OpenAI, fmt: Any, **extra: Any) -> bytes:
    return client.audio.speech.create(model="gpt-4o-mini-tts", voice="coral", input=SENTENCE, response_format=fmt,
                                      **extra).content


def test_wav_is_a_readable_file_as_long_as_the_text_takes(sdk: openai.OpenAI) -> None:
    with wave.open(io.BytesIO(_speak(sdk, "wav"))) as audio:
        assert (audio.getnchannels(), audio.getsampwidth(), audio.getframerate()) == (1, 2, 24_000)
        assert audio.getnframes() == int(14 / 2.5 * 24_000)
        assert any(audio.readframes(audio.getnframes()))  # not silence
    assert len(_speak(sdk, "pcm")) == 2 * int(14 / 2.5 * 24_000)
    fast = sdk.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format="pcm", speed=2.0)
    assert len(fast.content) == 2 * int(14 / 2.5 / 2 * 24_000)


def test_mp3_and_aac_are_walkable_frame_streams(sdk: openai.OpenAI) -> None:
    mp3 = _speak(sdk, "mp3")
    assert len(mp3) % 144 == 0 and all(mp3[i:i + 2] == b"\xff\xf3" for i in range(0, len(mp3), 144))
    assert len(mp3) // 144 * 576 >= 14 / 2.5 * 24_000
    aac, at, frames = _speak(sdk, "aac"), 0, 0
    while at < len(aac):
        assert aac[at] == 0xFF and aac[at + 1] & 0xF0 == 0xF0  # ADTS sync
        at += ((aac[at + 3] & 3) << 11) | (aac[at + 4] << 3) | (aac[at + 5] >> 5)
        frames += 1
    assert at == len(aac) and frames * 1024 >= 14 / 2.5 * 24_000


def test_flac_has_streaminfo_and_frames_with_valid_crcs(sdk: openai.OpenAI) -> None:
    data = _speak(sdk, "flac")
    assert data[:4] == b"fLaC" and data[4] == 0x80 and int.from_bytes(data[5:8], "big") == 34
    info = int.from_bytes(data[18:26], "big")
    assert info >> 44 == 24_000 and (info & ((1 << 36) - 1)) == int(14 / 2.5 * 24_000)
    at, total = 42, 0
    while at < len(data):
        assert data[at:at + 2] == b"\xff\xf8"
        header_end = at + 4 + (2 if data[at + 4] >= 0xC0 else 1) + 2  # a 1- or 2-byte frame number, the size
        size = int.from_bytes(data[header_end - 2:header_end], "big") + 1
        assert _crc(data[at:header_end], 8, 0x07) == data[header_end]
        frame_end = header_end + 1 + 1 + 2 * size
        assert _crc(data[at:frame_end], 16, 0x8005) == int.from_bytes(data[frame_end:frame_end + 2], "big")
        at, total = frame_end + 2, total + size
    assert total == int(14 / 2.5 * 24_000)


def test_opus_is_ogg_pages_with_valid_crcs(sdk: openai.OpenAI) -> None:
    data, at, pages = _speak(sdk, "opus"), 0, []
    while at < len(data):
        assert data[at:at + 4] == b"OggS"
        segments = data[at + 26]
        length = 27 + segments + sum(data[at + 27:at + 27 + segments])
        page = data[at:at + length]
        assert _crc(page[:22] + b"\0\0\0\0" + page[26:], 32, 0x04C11DB7) == struct.unpack("<I", page[22:26])[0]
        pages.append(page)
        at += length
    assert pages[0][28:36] == b"OpusHead" and pages[1][28:36] == b"OpusTags" and pages[-1][5] & 0x04


@requires_spec
def test_speech_streams_sse_events_with_usage(mock_server: ServerThread, sdk: openai.OpenAI) -> None:
    with sdk.audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="marin", input=SENTENCE,
                                                         response_format="wav", stream_format="sse") as streamed:
        raw = streamed.read()
    events = validate_sse_events("CreateSpeechResponseStreamEvent", raw)
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["input_tokens"] > 0
    with pytest.raises(openai.BadRequestError):
        sdk.audio.speech.create(model="tts-1", voice="alloy", input="hi", stream_format="sse")


def test_speech_checks_like_openai(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as voice:
        sdk.audio.speech.create(model="tts-1", voice="robot", input="hi")  # type: ignore[arg-type]
    assert voice.value.param == "voice"
    with pytest.raises(openai.NotFoundError):
        sdk.audio.speech.create(model="gpt-4o", voice="alloy", input="hi")
    with pytest.raises(openai.BadRequestError) as long:
        sdk.audio.speech.create(model="tts-1", voice="alloy", input="x" * 4097)
    assert long.value.param == "input"


def _wav(seconds: float) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(b"\x01\x00" * int(seconds * 16_000))
    return buffer.getvalue()


def test_transcriptions_in_every_format(sdk: openai.OpenAI) -> None:
    audio = ("talk.wav", _wav(9.5))
    as_json = sdk.audio.transcriptions.with_raw_response.create(model="whisper-1", file=audio)
    body = json.loads(as_json.http_response.content)
    conforms("CreateTranscriptionResponseJson", body)
    assert body["text"] and body["usage"] == {"type": "duration", "seconds": 10}
    again = sdk.audio.transcriptions.create(model="whisper-1", file=audio)
    assert again.text == body["text"]  # the same file, the same words
    other = sdk.audio.transcriptions.create(model="whisper-1", file=("talk.wav", _wav(3)))
    assert other.text != body["text"]
    text = sdk.audio.transcriptions.create(model="whisper-1", file=audio, response_format="text")
    assert text.strip() == body["text"]
    srt = sdk.audio.transcriptions.create(model="whisper-1", file=audio, response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> ") and "\n\n2\n" in srt
    vtt = sdk.audio.transcriptions.create(model="whisper-1", file=audio, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
    verbose = sdk.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=audio, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    detailed = json.loads(verbose.http_response.content)
    conforms("CreateTranscriptionResponseVerboseJson", detailed)
    assert detailed["duration"] == 9.5 and detailed["segments"][-1]["end"] == 9.5 and detailed["words"]
    assert " ".join(s["text"].strip() for s in detailed["segments"]) == body["text"]


def test_gpt_4o_transcribe_reports_tokens_and_streams(sdk: openai.OpenAI) -> None:
    audio = ("talk.wav", _wav(4))
    done = sdk.audio.transcriptions.create(model="gpt-4o-transcribe", file=audio)
    assert done.usage is not None and done.usage.type == "tokens"
    events = list(sdk.audio.transcriptions.create(model="gpt-4o-transcribe", file=audio, stream=True))
    assert "".join(e.delta for e in events if e.type == "transcript.text.delta") == done.text
    assert events[-1].type == "transcript.text.done" and events[-1].text == done.text
    with pytest.raises(openai.BadRequestError):
        sdk.audio.transcriptions.create(model="gpt-4o-transcribe", file=audio, response_format="srt")
    with pytest.raises(openai.BadRequestError):
        sdk.audio.transcriptions.create(model="whisper-1", file=audio, stream=True)


def test_translations(sdk: openai.OpenAI) -> None:
    with pytest.deprecated_call():  # the SDK marks translations deprecated; the API still serves them
        raw = sdk.audio.translations.with_raw_response.create(model="whisper-1", file=("talk.wav", _wav(2)))
    body = json.loads(raw.http_response.content)
    conforms("CreateTranslationResponseJson", body)
    assert body["text"]
    with pytest.raises(openai.BadRequestError), pytest.deprecated_call():
        sdk.audio.translations.create(model="gpt-4o-transcribe", file=("talk.wav", _wav(2)))


@settings(max_examples=10, deadline=None)
@given(st.text(min_size=1, max_size=120), st.sampled_from(["wav", "mp3", "flac", "opus", "aac", "pcm"]))
def test_the_same_speech_request_gives_the_same_bytes(mock_server: ServerThread, text: str, fmt: str) -> None:
    with openai.OpenAI(base_url=mock_server.url + "/v1", api_key="sk-test", max_retries=0) as client:
        first = client.audio.speech.create(model="tts-1", voice="nova", input=text, response_format=fmt).content
        second = client.audio.speech.create(model="tts-1", voice="nova", input=text, response_format=fmt).content
    assert first == second and zlib.crc32(first) == zlib.crc32(second)


def test_the_crcs_match_their_published_check_values() -> None:
    """The catalogue's check values for b"123456789": CRC-8 (FLAC's), CRC-16/UMTS (FLAC's frame CRC),
    and CRC-32/CKSUM before its final XOR (Ogg's page CRC)."""
    assert _crc(b"123456789", 8, 0x07) == 0xF4
    assert _crc(b"123456789", 16, 0x8005) == 0xFEE8
    assert _crc(b"123456789", 32, 0x04C11DB7) == 0x765E7680 ^ 0xFFFFFFFF
