"""Chat and completion requests for causal_lm and seq2seq runs.

A prompt is asked exactly as the run's own ``generate``/``chat`` ask it (the recipe's prompt template, system
prompt and the model's chat template), so the server answers what ``tunelab generate`` and ``tunelab chat`` answer.
A request's OpenAI parameters go over a copy of the recipe's ``generate:`` section; requests whose settings are
equal share a batch (one ``model.generate`` call), and a streamed request is generated on its own, token by token.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any

from jinja2 import TemplateError

from tunelab.errors import TunelabError
from tunelab.recipe import GenerateConfig
from tunelab.run import Run
from tunelab.serve.batcher import Job
from tunelab.serve.decode import Abandoned, Answer, TextStream, generate_answers
from tunelab.serve.errors import ApiError, bad_request
from tunelab.serve.options import ServeOptions
from tunelab.serve.schemas import Message, Sampling
from tunelab.tasks.generation import prompt_from_text

Turns = tuple[tuple[str, str], ...]  # (role, content) pairs: hashable and immutable, unlike OpenAI's dicts


@dataclass(frozen=True)
class Ask:
    """One prompt with its generation settings: a chat (``turns``) or a text, as the request gave it."""

    cfg: GenerateConfig
    turns: Turns | None = None
    text: str | None = None


class Generator:
    """Serves a causal_lm or seq2seq run: turns asks into prompt ids and generates their answers in batches."""

    def __init__(self, run: Run, options: ServeOptions) -> None:
        self.task, self.model, self.options = run.task, run.model, options
        self.tokenizer, self.defaults = self.task.tokenizer, run.recipe.generate
        self.decoder_only = self.task.decoder_only
        self.template = run.recipe.task.prompt_template
        self.system = run.recipe.task.system_prompt if self.decoder_only else None  # causal_lm's option only
        self.context = getattr(self.model.config, "max_position_embeddings", None)  # None: relative positions (T5)
        self.chats = not self.decoder_only or self.task.use_chat  # seq2seq: one user message at a time
        self.endpoints = frozenset({"chat", "completions"} if self.chats else {"completions"})
        self.model_name, self.task_type = run.recipe.model.name, run.recipe.task.type

    def why_not(self, endpoint: str) -> str:
        """Why this run does not answer ``endpoint``, and what to call instead."""
        if endpoint == "chat":
            return (f"the model '{self.model_name}' has no chat template (or the recipe sets task.chat_template: false), "
                    "so this run cannot take chat messages; send the prompt to POST /v1/completions")
        return f"this is a {self.task_type} run, which generates text; use POST /v1/chat/completions or /v1/completions"

    # ---- on the event loop: settings and checks that need no tokenizer ------------------------------------------
    def settings(self, request: Sampling) -> GenerateConfig:
        """The recipe's generate section with the request's parameters over it (temperature 0 means greedy)."""
        given: dict[str, Any] = {}
        tokens = request.new_tokens()
        if tokens is not None:
            if tokens > self.options.max_tokens:
                raise bad_request(f"max_tokens={tokens} is over this server's limit of {self.options.max_tokens} "
                                  "(tunelab serve --max-tokens)", param="max_tokens")
            given["max_new_tokens"] = tokens
        if request.temperature is not None:
            sample = request.temperature > 0
            given |= {"do_sample": sample} | ({"temperature": request.temperature} if sample else {})
        if request.top_p is not None:
            given["top_p"] = request.top_p
        if request.stop is not None:
            given["stop"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)
        return self.defaults.model_copy(update=given)

    def chat_ask(self, messages: list[Message], cfg: GenerateConfig) -> Ask:
        """A chat request's messages as an ask; empty or over-long chats are a 400 naming the message."""
        turns = tuple(("system" if m.role == "developer" else m.role, m.text()) for m in messages)
        for i, (_, content) in enumerate(turns):
            if not content.strip():
                raise bad_request(f"messages[{i}].content is empty; every message needs text",
                                  param=f"messages[{i}].content")
        self._check_size(sum(len(content) for _, content in turns), "messages")
        if self.decoder_only:
            return Ask(cfg, turns=turns)
        if len(turns) != 1 or turns[0][0] != "user":
            raise bad_request(f"this {self.task_type} run answers one source text at a time: send exactly one user "
                              "message (no system message or history)", param="messages")
        return Ask(cfg, text=turns[0][1])

    def text_ask(self, prompt: str, param: str, cfg: GenerateConfig) -> Ask:
        """A completion prompt as an ask; an empty or over-long prompt is a 400."""
        if not prompt.strip():
            raise bad_request(f"{param} is empty; send the text to complete", param=param)
        self._check_size(len(prompt), param)
        return Ask(cfg, text=prompt)

    def _check_size(self, chars: int, param: str) -> None:
        if chars > self.options.max_input_chars:
            raise bad_request(f"{param} holds {chars} characters, over this server's limit of "
                              f"{self.options.max_input_chars} (tunelab serve --max-input-chars)",
                              param=param, code="input_too_long")

    # ---- on the model thread --------------------------------------------------------------------------------------
    def prompt_ids(self, ask: Ask) -> list[int]:
        """Token ids that ask the model, built as the task's ``generate``/``chat`` build them; a 400 when the
        prompt cannot be built or does not fit the model's context with the tokens asked for."""
        try:
            if not self.decoder_only:  # as Seq2SeqTask.generate: the template over the source
                ids = self.tokenizer([prompt_from_text(self.template, ask.text)])["input_ids"][0]
            else:  # as CausalLMTask.generate (a text) and CausalLMTask.chat (turns)
                turns = ask.turns or (("user", prompt_from_text(self.template, ask.text)),)
                messages = [{"role": role, "content": content} for role, content in turns]
                if self.system and messages[0]["role"] != "system":
                    messages.insert(0, {"role": "system", "content": self.system})
                ids = self.task.prompt_ids(messages)
        except TemplateError as err:
            raise bad_request(f"the model's chat template refuses these messages: {err}", param="messages") from None
        except TunelabError as err:
            raise bad_request(str(err)) from None
        new = ask.cfg.max_new_tokens
        # a decoder-only model holds prompt and answer in one sequence; an encoder-decoder holds each in its own
        if self.context and (len(ids) + new if self.decoder_only else max(len(ids), new)) > self.context:
            raise bad_request(f"the prompt is {len(ids)} tokens; with max_tokens={new} that is over the model's "
                              f"context of {self.context} tokens; shorten the prompt or ask for fewer tokens",
                              param="messages" if ask.turns else "prompt", code="context_length_exceeded")
        return ids

    def work(self, jobs: list[Job]) -> list[Any]:
        """Answers for jobs that share settings: their prompts in ``max_batch``-sized ``generate`` calls."""
        if jobs[0].stream is not None:  # a streamed request is always a batch of its own
            return [self._stream(jobs[0])]
        cfg = jobs[0].items[0].cfg
        results: list[Any] = [None] * len(jobs)
        prompts: list[list[int]] = []
        counts: list[tuple[int, int]] = []
        for j, job in enumerate(jobs):
            try:
                ids = [self.prompt_ids(ask) for ask in job.items]
            except ApiError as err:
                results[j] = err
                continue
            counts.append((j, len(ids)))
            prompts += ids
        step = self.options.max_batch
        answers = iter([answer for start in range(0, len(prompts), step)
                        for answer in generate_answers(self.model, self.tokenizer, prompts[start:start + step], cfg,
                                                       self.decoder_only)])
        for j, count in counts:
            results[j] = list(islice(answers, count))
        return results

    def _stream(self, job: Job) -> list[Answer] | Exception:
        """One ask generated with its text sent to the job's channel as it settles ('start' once the prompt is
        accepted). Beam search cannot stream token by token: its answer is sent whole when it is done."""
        ask, channel = job.items[0], job.stream
        try:
            ids = self.prompt_ids(ask)
        except ApiError as err:
            return err
        channel.put("start")
        stream = TextStream(self.tokenizer, ask.cfg.stop, lambda piece: channel.put("text", piece), channel.abandoned)
        try:
            answer = generate_answers(self.model, self.tokenizer, [ids], ask.cfg, self.decoder_only,
                                      stream if ask.cfg.num_beams == 1 else None)[0]
        except Abandoned as gone:
            return gone
        stream.finish(answer.text)
        return [answer]
