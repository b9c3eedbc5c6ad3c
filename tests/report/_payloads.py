"""XSS payloads the report tests inject into a run (replies, persona text)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Each payload, if it ever ran, would change the title or mark the DOM: the browser test looks for both.
PAYLOADS = {
    "script": '<script>document.title="PWNED-script"</script>',
    "img": "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">",
    "textarea": '</textarea><script>document.title="PWNED-textarea"</script>',
    "svg": "<svg onload=\"document.body.setAttribute('data-pwned','svg')\"></svg>",
}
PERSONA_PAYLOAD = "I am a teacher " + PAYLOADS["img"] + " " + PAYLOADS["textarea"]
REPLY_PAYLOAD = "Sure. " + PAYLOADS["script"] + " " + PAYLOADS["svg"] + " my key is sk-ABCDEF1234567890xyz"
PERSONA_MARK = "I am a teacher"
