"""Audio: POST /v1/audio/speech, /v1/audio/transcriptions and /v1/audio/translations.

Speech is a valid file in the requested format (mp3, opus in Ogg, aac in ADTS, flac, wav, pcm: 24 kHz
mono 16-bit like OpenAI's), as long as the input takes to say (about 2.5 words a second, divided by
`speed`). wav and pcm carry a soft tone whose pitch comes from the request; mp3, opus, aac and flac
carry silence in frames any decoder accepts. `stream_format: "sse"` (gpt-4o-mini-tts) sends
`speech.audio.delta` events and `speech.audio.done` with usage.

Transcriptions and translations are deterministic text drawn from the uploaded file's SHA-256 (and the
model, `prompt`, `language`, `--seed`); the duration is read from a WAV header, else estimated from the
size (128 kbit/s). `response_format` json, text, srt, vtt and verbose_json (segments, and words with
`timestamp_granularities[]=word`) follow OpenAI's per-model rules; `stream=true` (gpt-4o models) sends
`transcript.text.delta` events and `transcript.text.done`. Not emulated: recognising the audio itself,
diarization, `include[]=logprobs` values (empty), the realtime transcription API.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import struct
from typing import Any

from aiohttp import web

from proxy.wire import sse
from proxy.wire.jsoncodec import dumps
from proxy.wire.tokens import count_text

from ...engine import textgen
from ...engine.catalogue import ModelInfo
from ...engine.faults import FAULT, PACING, Pacing
from ...engine.forms import read_form
from ...engine.rng import RequestRandom
from ...engine.state import CATALOGUE, SETTINGS, SLEEP, Call, endpoint
from ...engine.streaming import send_stream
from ...engine.validation import Num, Obj, OneOf, Str
from ...errors import invalid
from ..files.files import answer

RATE = 24_000
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin",
          "cedar")
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
_CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                  "wav": "audio/wav", "pcm": "audio/pcm"}

_SPEECH = Obj({
    "model": Str(), "input": Str(max_len=4096), "voice": OneOf(Str(VOICES), Obj({"id": Str()}, required=("id",))),
    "instructions": Str(max_len=4096), "response_format": Str(FORMATS), "speed": Num(0.25, 4.0),
    "stream_format": Str(("sse", "audio")),
}, required=("model", "input", "voice"))


# --- encoders -----------------------------------------------------------------------------------

def _tone(samples: int, rnd: RequestRandom) -> bytes:
    """16-bit little-endian mono samples: a soft tone, faded in and out."""
    pitch = 180 + rnd.randrange(220)
    fade = max(1, min(samples // 4, RATE // 20))
    out = bytearray()
    for i in range(samples):
        envelope = min(1.0, i / fade, (samples - i) / fade)
        out += struct.pack("<h", int(3000 * envelope * math.sin(2 * math.pi * pitch * i / RATE)))
    return bytes(out)


def wav(pcm: bytes) -> bytes:
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1, RATE, RATE * 2, 2,
                         16, b"data", len(pcm))
    return header + pcm


def mp3(samples: int) -> bytes:
    """MPEG-2 Layer III, 24 kHz mono, 48 kbit/s: silent frames of 576 samples (144 bytes each)."""
    frame = b"\xff\xf3\x64\xc0" + bytes(140)
    return frame * max(1, math.ceil(samples / 576))


def aac(samples: int) -> bytes:
    """AAC-LC in ADTS, 24 kHz mono: frames of 1024 silent samples (a single channel element, no spectrum)."""
    payload = b"\x01\x40\x00\x07"
    length = 7 + len(payload)
    header = bytes([0xFF, 0xF1, (1 << 6) | (6 << 2) | 0, (1 << 6) | (length >> 11), (length >> 3) & 0xFF,
                    ((length & 7) << 5) | 0x1F, 0xFC])
    return (header + payload) * max(1, math.ceil(samples / 1024))


def _crc(data: bytes, bits: int, poly: int) -> int:
    """The MSB-first CRC of `data` with an initial value of 0 and no final XOR: FLAC's CRC-8 (0x07) and
    CRC-16 (0x8005), Ogg's CRC-32 (0x04C11DB7)."""
    top, mask = 1 << (bits - 1), (1 << bits) - 1
    crc = 0
    for byte in data:
        crc ^= byte << (bits - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
    return crc


def _utf8_number(n: int) -> bytes:
    """FLAC's frame number coding (UTF-8 style, beyond Unicode's range limits)."""
    if n < 0x80:
        return bytes([n])
    for count, limit in ((2, 0x800), (3, 0x10000), (4, 0x200000), (5, 0x4000000), (6, 0x80000000)):
        if n < limit:
            tail = [0x80 | ((n >> (6 * i)) & 0x3F) for i in reversed(range(count - 1))]
            lead = ((0xFF << (8 - count)) & 0xFF) | (n >> (6 * (count - 1)))
            return bytes([lead, *tail])
    raise ValueError("frame number too large")


def flac(samples: int, block: int = 4096) -> bytes:
    """FLAC, 24 kHz mono 16-bit, verbatim subframes of silence, with correct CRCs."""
    info = struct.pack(">HH", block, block) + bytes(6)  # block sizes, unknown frame sizes
    info += ((RATE << 44) | (0 << 41) | (15 << 36) | samples).to_bytes(8, "big") + bytes(16)
    out = bytearray(b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info)
    for number, start in enumerate(range(0, samples, block)):
        size = min(block, samples - start)
        header = bytes([0xFF, 0xF8, 0x77, 0x08]) + _utf8_number(number) + (size - 1).to_bytes(2, "big")
        header += bytes([_crc(header, 8, 0x07)])
        frame = header + b"\x02" + bytes(2 * size)
        out += frame + _crc(frame, 16, 0x8005).to_bytes(2, "big")
    return bytes(out)


def _ogg_page(packets: list[bytes], granule: int, sequence: int, flags: int, serial: int) -> bytes:
    lacing = bytearray()
    for packet in packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    header = struct.pack("<4sBBqIII", b"OggS", 0, flags, granule, serial, sequence, 0) + bytes([len(lacing)]) + lacing
    page = header + b"".join(packets)
    crc = _crc(page, 32, 0x04C11DB7)
    return page[:22] + struct.pack("<I", crc) + page[26:]


def opus(samples: int, serial: int) -> bytes:
    """Opus in Ogg: the two header packets, then 20 ms packets that carry no frame data (silence)."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, 312, RATE, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 6) + b"oaigat" + struct.pack("<I", 0)
    out = bytearray(_ogg_page([head], 0, 0, 0x02, serial) + _ogg_page([tags], 0, 1, 0, serial))
    packets = max(1, math.ceil(samples / (RATE // 50)))
    sequence, done = 2, 0
    while done < packets:
        batch = min(200, packets - done)
        done += batch
        last = 0x04 if done == packets else 0
        out += _ogg_page([b"\xf8"] * batch, 312 + done * 960, sequence, last, serial)
        sequence += 1
    return bytes(out)


def encode(fmt: str, seconds: float, rnd: RequestRandom) -> bytes:
    samples = max(1, int(seconds * RATE))
    if fmt == "pcm":
        return _tone(samples, rnd)
    if fmt == "wav":
        return wav(_tone(samples, rnd))
    if fmt == "mp3":
        return mp3(samples)
    if fmt == "aac":
        return aac(samples)
    if fmt == "flac":
        return flac(samples)
    return opus(samples, rnd.getrandbits(32))


# --- speech -------------------------------------------------------------------------------------

def speech_seconds(text: str, speed: float) -> float:
    return max(0.5, len(text.split()) / 2.5) / speed


async def speech(call: Call) -> web.StreamResponse:
    body = call.body
    _SPEECH.check(body, "")
    model = call.catalogue.require(body["model"], "speech")
    if body.get("instructions") and model.id.startswith("tts-1"):
        raise invalid("Instructions are not supported with tts-1 and tts-1-hd.", "instructions", "unsupported_value")
    if body.get("stream_format") == "sse" and model.id.startswith("tts-1"):
        raise invalid("stream_format 'sse' is not supported with tts-1 and tts-1-hd.", "stream_format",
                      "unsupported_value")
    fmt = body.get("response_format") or "mp3"
    rnd = call.random("audio.speech", body)
    seconds = speech_seconds(body["input"], float(body.get("speed") or 1.0))
    audio = await asyncio.to_thread(encode, fmt, seconds, rnd)
    if body.get("stream_format") == "sse":
        step = 16 * 1024
        frames = [sse.frame(dumps({"type": "speech.audio.delta",
                                   "audio": base64.b64encode(audio[i:i + step]).decode()}))
                  for i in range(0, len(audio), step)]
        text_tokens = count_text(body["input"] + (body.get("instructions") or ""), "gpt-4o")
        audio_tokens = math.ceil(seconds * 20)
        frames.append(sse.frame(dumps({"type": "speech.audio.done", "usage": {
            "input_tokens": text_tokens, "output_tokens": audio_tokens, "total_tokens": text_tokens + audio_tokens}})))
        return await call.stream(frames)
    response = web.Response(body=audio, content_type=_CONTENT_TYPES[fmt], headers=call.headers)
    return response


# --- transcriptions and translations ------------------------------------------------------------

_TEXT_FIELDS = {"model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]",
                "stream", "include[]", "chunking_strategy", "known_speaker_names[]", "known_speaker_references[]"}


def duration_of(data: bytes) -> float:
    """A WAV's duration from its header; otherwise the size at 128 kbit/s."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            channels, rate = struct.unpack("<HI", data[22:28])
            bits = struct.unpack("<H", data[34:36])[0]
            at = data.find(b"data", 36)
            size = struct.unpack("<I", data[at + 4:at + 8])[0] if at >= 0 else len(data) - 44
            return round(min(size, len(data)) / max(1, channels * rate * bits // 8), 2)
        except struct.error:
            pass
    return round(max(0.1, len(data) / 16_000), 2)


def _timestamp(seconds: float, comma: bool) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{',' if comma else '.'}{millis:03d}"


def _segments(text: str, duration: float) -> list[tuple[float, float, str]]:
    sentences = [s.strip() for s in text.replace("? ", "?|").replace(". ", ".|").split("|") if s.strip()]
    total = sum(len(s) for s in sentences) or 1
    out, at = [], 0.0
    for number, sentence in enumerate(sentences, 1):
        end = duration if number == len(sentences) else round(at + duration * len(sentence) / total, 2)
        out.append((round(at, 2), end, sentence))
        at = end
    return out


async def _heard(request: web.Request, task: str) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    form = await read_form(request, {"file"}, _TEXT_FIELDS, settings.max_file_bytes)
    filename, data = form.file("file")
    model: ModelInfo = request.app[CATALOGUE].require(form.require("model"), "transcription")
    whisper = model.id.startswith("whisper")
    if task == "translate" and not whisper:
        raise invalid(f"The model {model.id} does not support translations; use whisper-1.", "model",
                      "unsupported_model")
    fmt = form.text("response_format") or "json"
    allowed = ("json", "text", "srt", "verbose_json", "vtt") if whisper else ("json", "text")
    Str(allowed).check(fmt, "response_format")
    granularities = form.fields.get("timestamp_granularities[]", [])
    for value in granularities:
        Str(("word", "segment")).check(value, "timestamp_granularities")
    if granularities and fmt != "verbose_json":
        raise invalid("timestamp_granularities requires response_format 'verbose_json'.", "timestamp_granularities",
                      "invalid_value")
    stream = (form.text("stream") or "false").lower() == "true"
    if stream and whisper:
        raise invalid("Streaming is not supported for the whisper-1 model.", "stream", "unsupported_value")
    temperature = form.text("temperature")
    if temperature is not None:
        try:
            Num(0, 1).check(float(temperature), "temperature")
        except ValueError:
            raise invalid("Invalid type for 'temperature': expected a number, but got a string instead.",
                          "temperature", "invalid_type") from None
    if not data:
        raise invalid("Audio file might be corrupted or unsupported", "file", "invalid_value")
    digest = hashlib.sha256(data).hexdigest()
    rnd = RequestRandom(f"oaigate-mock/audio.{task}", settings.seed, digest, model.id, form.text("prompt"),
                        form.text("language"))
    duration = duration_of(data)
    sentences = max(1, min(12, int(duration / 4) + 1))
    text = textgen.answer(form.text("prompt") or filename, rnd, sentences)
    language = "english" if task == "translate" else (form.text("language") or "en")
    prompt_tokens = count_text(form.text("prompt") or "", "gpt-4o")
    output_tokens = count_text(text, "gpt-4o")
    audio_tokens = math.ceil(duration * 10)
    usage: dict[str, Any]
    if whisper:
        usage = {"type": "duration", "seconds": math.ceil(duration)}
    else:
        usage = {"type": "tokens", "input_tokens": prompt_tokens + audio_tokens,
                 "input_token_details": {"text_tokens": prompt_tokens, "audio_tokens": audio_tokens},
                 "output_tokens": output_tokens, "total_tokens": prompt_tokens + audio_tokens + output_tokens}
    headers = {"x-request-id": "req_" + rnd.key.hex()[:32]}
    if stream:
        frames = [sse.frame(dumps({"type": "transcript.text.delta", "delta": (" " if i else "") + word}))
                  for i, word in enumerate(text.split(" "))]
        frames.append(sse.frame(dumps({"type": "transcript.text.done", "text": text, "usage": usage})))
        return await send_stream(request, frames, headers=headers, pacing=request.get(PACING, Pacing()),
                                 fault=request.get(FAULT), sleep=request.app[SLEEP])
    if fmt == "text":
        return web.Response(text=text + "\n", content_type="text/plain", headers=headers)
    segments = _segments(text, duration)
    if fmt in ("srt", "vtt"):
        lines = ["WEBVTT", ""] if fmt == "vtt" else []
        for number, (start, end, sentence) in enumerate(segments, 1):
            if fmt == "srt":
                lines.append(str(number))
            lines += [f"{_timestamp(start, fmt == 'srt')} --> {_timestamp(end, fmt == 'srt')}", sentence, ""]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", headers=headers)
    if fmt == "json":
        body: dict[str, Any] = {"text": text, "usage": usage} if task == "transcribe" else {"text": text}
        return await answer(request, body)
    verbose: dict[str, Any] = {"task": task, "language": language, "duration": duration, "text": text}
    if not granularities or "segment" in granularities:
        verbose["segments"] = [
            {"id": i, "seek": 0, "start": start, "end": end, "text": " " + sentence,
             "tokens": [50364 + i], "temperature": float(temperature or 0), "avg_logprob": -0.25,
             "compression_ratio": 1.2, "no_speech_prob": 0.01}
            for i, (start, end, sentence) in enumerate(segments)]
    if "word" in granularities:
        words: list[dict[str, Any]] = []
        for start, end, sentence in segments:
            parts = sentence.split()
            step = (end - start) / max(1, len(parts))
            words += [{"word": w.strip(".,?!"), "start": round(start + k * step, 2),
                       "end": round(start + (k + 1) * step, 2)} for k, w in enumerate(parts)]
        verbose["words"] = words
    if task == "transcribe":
        verbose["usage"] = usage
    return await answer(request, verbose)


async def transcribe(request: web.Request) -> web.StreamResponse:
    return await _heard(request, "transcribe")


async def translate(request: web.Request) -> web.StreamResponse:
    return await _heard(request, "translate")


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/audio/speech", endpoint(speech))
    app.router.add_post("/v1/audio/transcriptions", transcribe)
    app.router.add_post("/v1/audio/translations", translate)
