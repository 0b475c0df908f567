// den playground: draws the Discord stand-in as one person sees it.
// Snowflakes stay strings throughout: JavaScript numbers cannot hold them.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  me: localStorage.getItem("den.as") || null,
  channel: localStorage.getItem("den.channel") || null,
  guild: null, cast: [], about: {},
  messages: [], replyTo: null, files: [],
  command: null, pickerIndex: 0,
  wire: [], wireOpen: false,
};

// ---------- talking to the playground ----------

async function api(method, path, body) {
  const res = await fetch(path, {
    method, headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) throw new Error((data && data.error) || res.statusText);
  return data || {};
}

function notice(text, isError) {
  const n = $("notice");
  n.textContent = text || "";
  n.className = isError ? "error" : "";
}

async function act(promise) {
  try { notice(""); return await promise; } catch (e) { notice(e.message, true); return null; }
}

function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result).split(",")[1] || "");
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

// ---------- small helpers ----------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c.nodeType ? c : String(c));
  return e;
}

// Bots choose the URLs of link buttons, embeds and avatars: only web addresses are followed or shown.
function safeUrl(u) {
  return typeof u === "string" && /^https?:\/\//i.test(u) ? u : null;
}

const COLOURS = ["#5865f2", "#3ba55d", "#faa81a", "#ed4245", "#eb459e", "#9b59b6", "#1abc9c"];
function avatar(id, name, url) {
  const a = el("div", { class: "avatar" });
  const safe = safeUrl(url);
  if (safe) a.style.backgroundImage = `url("${safe.replace(/["()\\]/g, encodeURIComponent)}")`;
  else {
    let h = 0;
    for (const ch of String(id)) h = (h * 31 + ch.charCodeAt(0)) % 9973;
    a.style.background = COLOURS[h % COLOURS.length];
    a.textContent = (name || "?").slice(0, 1).toUpperCase();
  }
  return a;
}

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function nameOf(id) {
  const p = state.guild && state.guild.people.find((x) => x.id === id);
  return p ? p.name : "unknown";
}
function channelName(id) {
  const c = state.guild && state.guild.channels.find((x) => x.id === id);
  return c ? c.name : "unknown";
}

// Discord's markdown, the part bots use: code, bold, italics, underline,
// strikethrough, quotes, links and mentions. Input is escaped first.
function markdown(text) {
  const blocks = [];
  let s = escapeHtml(text).replace(/```(?:\w+\n)?([\s\S]*?)```/g, (_, code) => {
    blocks.push(`<pre><code>${code}</code></pre>`);
    return `\u0000${blocks.length - 1}\u0000`;
  });
  s = s.replace(/`([^`\n]+)`/g, "<code>$1</code>")
    .replace(/\*\*([\s\S]+?)\*\*/g, "<strong>$1</strong>")
    .replace(/__([\s\S]+?)__/g, "<u>$1</u>")
    .replace(/\*([^*\n]+)\*/g, "<em>$1</em>")
    .replace(/~~([\s\S]+?)~~/g, "<s>$1</s>")
    .replace(/^&gt; (.*)$/gm, "<blockquote>$1</blockquote>")
    .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g, '<a href="$2" target="_blank" rel="noopener">$1</a>')
    .replace(/(^|[\s(])(https?:\/\/[^\s<]+)/g, '$1<a href="$2" target="_blank" rel="noopener">$2</a>')
    .replace(/&lt;@!?(\d+)&gt;/g, (_, id) => `<span class="mention">@${escapeHtml(nameOf(id))}</span>`)
    .replace(/&lt;#(\d+)&gt;/g, (_, id) => `<span class="mention">#${escapeHtml(channelName(id))}</span>`)
    .replace(/&lt;@&amp;(\d+)&gt;/g, '<span class="mention">@role</span>')
    .replace(/@(everyone|here)\b/g, '<span class="mention">@$1</span>');
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => blocks[Number(i)]);
}

function md(text) {
  const span = el("span");
  span.innerHTML = markdown(text);
  return span;
}

function time(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function size(n) {
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1048576).toFixed(1)} MB`;
}

// ---------- loading ----------

async function loadState() {
  const q = state.me ? `?as=${state.me}` : "";
  let s;
  try { s = await api("GET", `/api/state${q}`); } catch (e) {
    if (state.me) { state.me = null; return loadState(); }
    notice(e.message, true);
    return;
  }
  state.cast = s.cast;
  state.about = s.about;
  state.guild = s.guild;
  if (!state.me || !s.cast.some((p) => p.id === state.me)) state.me = s.guild ? s.guild.me.id : s.cast[0].id;
  if (!state.guild.channels.some((c) => c.id === state.channel && c.kind !== 4)) state.channel = s.general;
  drawShell();
  await loadMessages();
}

let loadingMessages = null;
async function loadMessages() {
  if (loadingMessages) { loadingMessages.again = true; return; }
  loadingMessages = { again: false };
  try {
    do {
      loadingMessages.again = false;
      const ch = currentChannel();
      if (!ch || ch.kind === 2 || ch.kind === 4) state.messages = [];
      else state.messages = (await act(api("GET", `/api/channels/${ch.id}/messages?as=${state.me}`))) || [];
      drawMessages();
    } while (loadingMessages.again);
  } finally { loadingMessages = null; }
}

function currentChannel() {
  return state.guild && state.guild.channels.find((c) => c.id === state.channel);
}

// ---------- drawing the frame ----------

const ICONS = { 0: "#", 2: "🔊", 5: "📢", 11: "🧵", 12: "🧵", 15: "💬" };

function drawShell() {
  const g = state.guild;
  $("guild-name").textContent = g.name;
  $("guild-icon").textContent = g.name.split(/\s+/).map((w) => w[0]).join("").slice(0, 3);
  $("guild-icon").title = g.name;
  $("model").textContent = state.about.model ? `model: ${state.about.model}` : "";
  $("model-note").textContent = state.about.note || "";
  $("model-note").hidden = !state.about.note;
  $("bind-note").textContent =
    `Local only: this page (${state.about.page || location.host}) and the Discord stand-in listen on 127.0.0.1, no login. ` +
    `Other bots: REST ${state.about.rest}, gateway ${state.about.gateway}.`;

  const list = $("channels");
  list.replaceChildren();
  for (const c of g.channels) {
    if (c.kind === 4) { list.append(el("li", { class: "category" }, c.name)); continue; }
    const thread = c.kind === 11 || c.kind === 12;
    list.append(el("li", {
      class: `${thread ? "thread" : ""} ${c.id === state.channel ? "selected" : ""}`,
      "data-channel": c.id, title: c.private ? "Private: only some people see it" : c.name,
      onclick: () => selectChannel(c.id),
    }, el("span", { class: "icon" }, ICONS[c.kind] || "#"), el("span", { class: "name" }, c.name),
    c.private ? el("span", { class: "lock" }, "🔒") : null));
    for (const who of c.voice || []) {
      const playing = (c.speaking || []).includes(who);
      list.append(el("li", { class: `in-voice ${playing ? "speaking" : ""}`, title: playing ? `${who} is sending audio` : who },
        `${playing ? "🔊" : "🎙️"} ${who}`));
    }
  }

  const who = $("who");
  who.replaceChildren(...state.cast.map((p) => el("option", { value: p.id, selected: p.id === state.me }, p.name)));
  const mine = state.cast.find((p) => p.id === state.me);
  $("me-title").textContent = mine ? mine.title : "";
  $("me-avatar").replaceWith(Object.assign(avatar(state.me, mine && mine.name), { id: "me-avatar" }));

  const ch = currentChannel();
  $("chat-icon").textContent = ch ? (ICONS[ch.kind] || "#") : "#";
  $("chat-name").textContent = ch ? ch.name : "";
  $("chat-topic").textContent = ch && ch.topic ? ch.topic : "";
  $("input").placeholder = ch ? (ch.kind === 15 ? `Start a post in ${ch.name}: first line is its title` : `Message #${ch.name}`) : "";
  $("input").disabled = !ch || ch.kind === 2;
  drawMembers();
}

function drawMembers() {
  const groups = new Map();
  for (const p of state.guild.people) {
    const title = p.bot ? "Bots" : (p.roles[0] || "Members");
    if (!groups.has(title)) groups.set(title, []);
    groups.get(title).push(p);
  }
  const box = $("members");
  box.replaceChildren();
  for (const [title, people] of groups) {
    box.append(el("h3", {}, `${title} — ${people.length}`));
    for (const p of people) {
      box.append(el("div", { class: `member ${p.id === state.me ? "me" : ""}` }, avatar(p.id, p.name), p.name,
        p.bot ? el("span", { class: "tag" }, "APP") : null));
    }
  }
}

function selectChannel(id) {
  state.channel = id;
  localStorage.setItem("den.channel", id);
  state.replyTo = null;
  drawReplying();
  drawShell();
  loadMessages();
}

// ---------- voice ----------

// A voice channel: who is in it, joining and leaving as the person chosen,
// and listening to what den plays there (the stand-in decodes it).
function drawVoice(box, ch) {
  const me = state.cast.find((p) => p.id === state.me);
  const inside = ch.voice || [];
  const here = me && inside.includes(me.name);
  box.append(
    el("div", { class: "empty" }, `🔊 ${ch.name}: ${inside.length ? inside.join(", ") : "nobody is here"}.`),
    (ch.speaking || []).length
      ? el("div", { class: "empty playing" }, `🎵 ${ch.speaking.join(", ")} playing here now: Listen here to hear it.`)
      : null,
    el("div", { class: "voice-actions" },
      el("button", { id: "voice-join", onclick: () => act(api("POST", "/api/voice", { as: state.me, channel: here ? null : ch.id })) },
        here ? "Leave voice" : "Join voice"),
      el("button", { id: "voice-listen", onclick: (e) => toggleListening(e.target) }, listening ? "⏹ Stop listening" : "🎧 Listen here")),
    el("div", { class: "empty" }, "Join, then ask den in a text channel: /play, or !play with a link or words."),
  );
}

let listening = null;

// Plays the raw 48 kHz stereo stream of /api/voice/audio through Web Audio, a little ahead of time.
async function toggleListening(button) {
  if (listening) { listening.abort(); return; }
  const ctl = new AbortController();
  listening = ctl;
  button.textContent = "⏹ Stop listening";
  const ctx = new AudioContext({ sampleRate: 48000 });
  try {
    const res = await fetch("/api/voice/audio", { signal: ctl.signal });
    if (!res.ok) throw new Error(((await res.json().catch(() => null)) || {}).error || res.statusText);
    const reader = res.body.getReader();
    let at = ctx.currentTime + 0.25;
    let rest = new Uint8Array(0);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const bytes = new Uint8Array(rest.length + value.length);
      bytes.set(rest); bytes.set(value, rest.length);
      const frames = Math.floor(bytes.length / 4);
      rest = bytes.slice(frames * 4);
      if (!frames) continue;
      const view = new DataView(bytes.buffer, 0, frames * 4);
      const buffer = ctx.createBuffer(2, frames, 48000);
      const left = buffer.getChannelData(0), right = buffer.getChannelData(1);
      for (let i = 0; i < frames; i++) {
        left[i] = view.getInt16(i * 4, true) / 32768;
        right[i] = view.getInt16(i * 4 + 2, true) / 32768;
      }
      const source = ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(ctx.destination);
      at = Math.max(at, ctx.currentTime + 0.05);
      source.start(at);
      at += frames / 48000;
    }
  } catch (e) {
    if (e.name !== "AbortError") notice(e.message, true);
  } finally {
    ctx.close();
    if (listening === ctl) listening = null;
    button.textContent = "🎧 Listen here";
  }
}

// ---------- messages ----------

function drawMessages() {
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  const ch = currentChannel();
  box.replaceChildren();
  if (ch && ch.kind === 2) {
    drawVoice(box, ch);
    return;
  }
  if (ch && ch.kind === 15) {
    const posts = state.guild.channels.filter((t) => t.parent_id === ch.id);
    box.append(el("div", { class: "empty" }, `Posts in ${ch.name}. Type below to start one (first line is its title).`));
    for (const p of posts) box.append(el("div", { class: "forum-post", onclick: () => selectChannel(p.id) }, `🧵 ${p.name}`));
    return;
  }
  if (!state.messages.length) box.append(el("div", { class: "empty" }, "No messages yet. Say something!"));
  let previous = null;
  for (const m of state.messages) {
    box.append(drawMessage(m, previous));
    previous = m;
  }
  if (atBottom) box.scrollTop = box.scrollHeight;
}

/** Reactions under a message; pressing one adds yours. */
function drawReactions(m, reactions) {
  const box = el("div", { class: "reactions" });
  for (const r of reactions) {
    box.append(el("button", {
      class: `reaction ${r.mine ? "mine" : ""}`, title: `React with ${r.emoji}`,
      onclick: () => react(m, r.emoji),
    }, `${r.emoji} ${r.count}`));
  }
  return box;
}

/** The emoji den's modules listen to, offered under the "React" button. */
const REACTIONS = ["👍", "👎", "🛑", "🔄", "❌", "🚀", "❤️", "😂"];

function pickReaction(m, anchor) {
  document.querySelectorAll(".reaction-picker").forEach((p) => p.remove());
  const picker = el("div", { class: "reaction-picker" },
    ...REACTIONS.map((e) => el("button", { title: e, onclick: () => { picker.remove(); react(m, e); } }, e)));
  anchor.closest(".msg").append(picker);
}

function react(m, emoji) {
  return act(api("POST", "/api/reactions", { as: state.me, channel: m.channel_id, message: m.id, emoji }));
}

function drawMessage(m, previous) {
  const v = m.den_view || {};
  const bot = m.author.bot || !!m.webhook_id;
  const continued = previous && !v.interaction && !v.replied && previous.author.id === m.author.id &&
    previous.author.username === m.author.username && new Date(m.timestamp) - new Date(previous.timestamp) < 420000;
  const row = el("div", {
    class: `msg ${continued ? "continued" : "first"} ${v.ephemeral ? "ephemeral" : ""}`,
    "data-message": m.id,
  });
  if (v.interaction) {
    const what = v.interaction.type === 2 ? `/${v.interaction.name}` : "a button";
    row.append(el("div", { class: "above" }, el("span", { class: "who" }, v.interaction.user), " used ",
      el("span", { class: "cmd" }, what)));
  } else if (v.replied) {
    row.append(el("div", { class: "reply-line" }, `${v.replied.author}: ${v.replied.content}`));
  }
  row.append(avatar(m.author.id, m.author.username, m.author.avatar));
  row.append(el("div", { class: "meta" }, el("span", { class: "author" }, m.author.username),
    bot ? el("span", { class: "tag" }, "APP") : null, el("span", { class: "time" }, time(m.timestamp))));
  const body = el("div", { class: "body" });
  if (v.loading) body.append(el("span", { class: "thinking" }, `${m.author.username} is thinking`));
  else if (m.content) {
    body.append(md(m.content));
    if (v.edits > 0) body.append(el("span", { class: "edited" }, "(edited)"));
  }
  row.append(body);
  for (const e of m.embeds || []) row.append(drawEmbed(e));
  if (m.attachments && m.attachments.length) row.append(drawFiles(m.attachments));
  if (m.components && m.components.length) row.append(drawComponents(m));
  if (v.reactions && v.reactions.length) row.append(drawReactions(m, v.reactions));
  if (v.ephemeral) row.append(el("div", { class: "only-you" }, "Only you can see this"));
  row.append(el("div", { class: "actions" },
    el("button", { title: "React", onclick: (e) => pickReaction(m, e.currentTarget) }, "🙂 React"),
    el("button", { title: "Reply", onclick: () => startReply(m) }, "↩ Reply"),
    el("button", { title: "Create thread", onclick: () => startThread(m) }, "🧵 Thread")));
  return row;
}

function drawEmbed(e) {
  const box = el("div", { class: "embed" });
  if (e.color !== undefined) box.style.borderLeftColor = `#${Number(e.color).toString(16).padStart(6, "0")}`;
  if (e.author && e.author.name) box.append(el("div", { class: "e-name" }, e.author.name));
  if (e.title) box.append(el("div", { class: "e-title" }, md(e.title)));
  if (e.description) box.append(el("div", { class: "e-desc" }, md(e.description)));
  if (e.fields && e.fields.length) {
    box.append(el("div", { class: "e-fields" }, e.fields.map((f) =>
      el("div", { class: `e-field ${f.inline ? "inline" : ""}` }, el("div", { class: "e-name" }, md(f.name)), md(f.value)))));
  }
  if (e.image && safeUrl(e.image.url)) box.append(el("img", { src: safeUrl(e.image.url), alt: "", style: "max-width:100%;margin-top:8px" }));
  if (e.footer && e.footer.text) box.append(el("div", { class: "e-footer" }, e.footer.text));
  return box;
}

function drawFiles(files) {
  return el("div", { class: "files" }, files.map((a) => {
    const image = /^image\//.test(a.content_type || "") || /\.(png|jpe?g|gif|webp)$/i.test(a.filename);
    if (image) return el("a", { href: a.url, target: "_blank" }, el("img", { src: a.url, alt: a.filename }));
    return el("div", { class: "file" }, "📄", el("div", {},
      el("a", { href: a.url, download: a.filename, target: "_blank" }, a.filename), el("div", { class: "size" }, size(a.size))));
  }));
}

function drawComponents(m) {
  const box = el("div", { class: "components" });
  for (const row of m.components) {
    const line = el("div", { class: "row" });
    for (const c of row.components || []) {
      if (c.type === 2) {
        const label = `${c.emoji && c.emoji.name ? c.emoji.name + " " : ""}${c.label || ""}`;
        if (c.style === 5) line.append(el("a", { class: "btn s5", href: safeUrl(c.url) || "#", target: "_blank", rel: "noopener" }, `${label} ↗`));
        else line.append(el("button", { class: `btn s${c.style}`, disabled: !!c.disabled,
          onclick: () => act(api("POST", "/api/components", { as: state.me, channel: m.channel_id, message: m.id, custom_id: c.custom_id })),
        }, label));
      } else if (c.type === 3) {
        const multiple = (c.max_values || 1) > 1;
        const menu = el("select", { class: "menu", multiple, disabled: !!c.disabled, "data-custom-id": c.custom_id },
          multiple ? null : el("option", { value: "", disabled: true, selected: true }, c.placeholder || "Make a selection"),
          (c.options || []).map((o) => el("option", { value: o.value, title: o.description || "" },
            `${o.emoji && o.emoji.name ? o.emoji.name + " " : ""}${o.label}`)));
        const send = () => {
          const values = [...menu.selectedOptions].map((o) => o.value).filter(Boolean);
          if (values.length) act(api("POST", "/api/components", { as: state.me, channel: m.channel_id, message: m.id, custom_id: c.custom_id, values }));
        };
        menu.addEventListener(multiple ? "blur" : "change", send);
        line.append(menu);
      }
    }
    box.append(line);
  }
  return box;
}

function startReply(m) {
  state.replyTo = m;
  drawReplying();
  $("input").focus();
}

function drawReplying() {
  const r = $("replying");
  r.hidden = !state.replyTo;
  if (state.replyTo) r.querySelector("span").textContent = `Replying to ${state.replyTo.author.username}`;
}

async function startThread(m) {
  const name = prompt("Thread name", (m.content || "thread").slice(0, 40));
  if (!name) return;
  const t = await act(api("POST", "/api/threads", { as: state.me, channel: m.channel_id, name, message: m.id }));
  if (t) { await loadState(); selectChannel(t.id); }
}

// ---------- the composer ----------

function commands() {
  return (state.guild && state.guild.commands) || [];
}

function drawPicker() {
  const text = $("input").value;
  const picker = $("picker");
  if (!text.startsWith("/") || state.command || text.includes(" ")) { picker.hidden = true; return; }
  const q = text.slice(1).toLowerCase();
  const found = commands().filter((c) => c.name.startsWith(q));
  if (!found.length) { picker.hidden = true; return; }
  state.pickerIndex = Math.min(state.pickerIndex, found.length - 1);
  picker.replaceChildren(el("div", { class: "p-head" }, "den's commands"), ...found.map((c, i) =>
    el("div", { class: `cmd ${i === state.pickerIndex ? "sel" : ""}`, "data-command": c.name, onclick: () => chooseCommand(c) },
      el("span", { class: "c-name" }, `/${c.name}`), el("span", { class: "c-desc" }, c.description || ""))));
  picker.hidden = false;
}

const TYPE_NAMES = { 3: "text", 4: "whole number", 5: "true/false", 6: "person", 7: "channel", 8: "role", 10: "number", 11: "file" };

function chooseCommand(c) {
  state.command = c;
  $("picker").hidden = true;
  $("input").value = `/${c.name} `;
  drawOptionsForm();
}

function optionField(o) {
  const req = o.required ? el("span", { class: "req" }, " *") : null;
  const attrs = { name: o.name, "data-type": o.type, required: !!o.required };
  let input;
  if (o.choices && o.choices.length) {
    input = el("select", attrs, el("option", { value: "" }, "—"), o.choices.map((ch) => el("option", { value: String(ch.value) }, ch.name)));
  } else if (o.type === 5) {
    input = el("select", attrs, el("option", { value: "" }, "—"), el("option", { value: "true" }, "true"), el("option", { value: "false" }, "false"));
  } else if (o.type === 6) {
    input = el("select", attrs, el("option", { value: "" }, "—"), state.guild.people.map((p) => el("option", { value: p.id }, p.name)));
  } else if (o.type === 7) {
    input = el("select", attrs, el("option", { value: "" }, "—"),
      state.guild.channels.filter((c) => c.kind !== 4).map((c) => el("option", { value: c.id }, c.name)));
  } else if (o.type === 11) {
    input = el("input", { ...attrs, type: "file" });
  } else if (o.type === 4 || o.type === 10) {
    input = el("input", { ...attrs, type: "number", step: o.type === 4 ? "1" : "any", min: o.min_value, max: o.max_value });
  } else {
    input = el("input", { ...attrs, type: "text", minlength: o.min_length, maxlength: o.max_length, placeholder: o.description || "" });
  }
  return el("label", { title: o.description || "" }, el("span", {}, o.name, req, ` (${TYPE_NAMES[o.type] || "value"})`), input);
}

function drawOptionsForm() {
  const form = $("options-form");
  const c = state.command;
  if (!c) { form.hidden = true; form.replaceChildren(); return; }
  const subs = (c.options || []).filter((o) => o.type === 1 || o.type === 2);
  form.replaceChildren(el("div", { class: "f-title" }, `/${c.name}`, el("small", {}, c.description || "")));
  const fields = el("div", { style: "display:contents", id: "option-fields" });
  const fill = (options) => fields.replaceChildren(...(options || []).map(optionField));
  if (subs.length) {
    const flat = [];
    for (const s of subs) {
      if (s.type === 1) flat.push({ path: [s], label: s.name });
      else for (const inner of s.options || []) flat.push({ path: [s, inner], label: `${s.name} ${inner.name}` });
    }
    const pick = el("select", { id: "subcommand" }, flat.map((f, i) => el("option", { value: String(i) }, f.label)));
    pick.addEventListener("change", () => fill(flat[Number(pick.value)].path.at(-1).options));
    form.append(el("label", {}, "subcommand", pick));
    form.subcommands = flat;
    fill(flat[0].path.at(-1).options);
  } else {
    form.subcommands = null;
    fill(c.options);
  }
  form.append(fields, el("div", { class: "f-buttons" },
    el("button", { type: "button", class: "btn s2", onclick: cancelCommand }, "Cancel"),
    el("button", { type: "submit", class: "btn s1", id: "run-command" }, `Send /${c.name}`)));
  form.hidden = false;
  const first = form.querySelector("input, select");
  if (first) first.focus();
}

function cancelCommand() {
  state.command = null;
  $("input").value = "";
  drawOptionsForm();
}

async function optionValue(input) {
  const type = Number(input.dataset.type);
  if (type === 11) {
    const file = input.files[0];
    if (!file) return undefined;
    const up = await api("POST", "/api/uploads", { name: file.name, data: await fileToBase64(file), content_type: file.type || null });
    return up.id;
  }
  if (input.value === "") return undefined;
  if (type === 4) return parseInt(input.value, 10);
  if (type === 10) return Number(input.value);
  if (type === 5) return input.value === "true";
  return input.value;
}

async function runCommand(ev) {
  ev.preventDefault();
  const form = $("options-form");
  const c = state.command;
  const leaves = [];
  for (const input of form.querySelectorAll("#option-fields input, #option-fields select")) {
    const value = await optionValue(input);
    if (value !== undefined) leaves.push({ name: input.name, type: Number(input.dataset.type), value });
  }
  let options = leaves;
  if (form.subcommands) {
    const path = form.subcommands[Number($("subcommand").value)].path;
    options = path.reduceRight((inner, s) => [{ name: s.name, type: s.type, options: inner }], leaves);
  }
  const done = await act(api("POST", "/api/commands", { as: state.me, channel: state.channel, name: c.name, options }));
  if (done) cancelCommand();
}

async function sendMessage() {
  const input = $("input");
  const content = input.value;
  if (content.startsWith("/")) {
    const c = commands().find((k) => k.name === content.slice(1).trim().split(/\s/)[0]);
    if (c) { chooseCommand(c); return; }
  }
  if (!content.trim() && !state.files.length) return;
  const ch = currentChannel();
  if (ch && ch.kind === 15) {
    const [title, ...rest] = content.split("\n");
    const t = await act(api("POST", "/api/threads", { as: state.me, channel: ch.id, name: title.slice(0, 100), content: rest.join("\n") || title }));
    if (t) { input.value = ""; await loadState(); selectChannel(t.id); }
    return;
  }
  const files = [];
  for (const f of state.files) files.push({ name: f.name, data: await fileToBase64(f), content_type: f.type || null });
  const sent = await act(api("POST", "/api/messages", {
    as: state.me, channel: state.channel, content, files, reply_to: state.replyTo ? state.replyTo.id : null,
  }));
  if (sent) {
    input.value = "";
    state.replyTo = null;
    state.files = [];
    drawReplying();
    drawFilesChosen();
    autosize();
  }
}

function drawFilesChosen() {
  const box = $("files-chosen");
  box.hidden = !state.files.length;
  box.textContent = state.files.map((f) => `📎 ${f.name} (${size(f.size)})`).join("  ");
}

function autosize() {
  const i = $("input");
  i.style.height = "auto";
  i.style.height = `${Math.min(i.scrollHeight, 200)}px`;
}

// ---------- the wire ----------

function wireText(e) {
  if (e.type === "rest") return `${e.method} ${e.path} ${e.status} ${e.operation} ${e.account}`;
  if (e.type === "gateway") return `${e.direction === "sent" ? "→" : "←"} ${e.name} ${e.account}`;
  return `violation ${e.message}`;
}

function wireMatches(e) {
  const f = $("wire-filter").value.trim().toLowerCase();
  if (!$("wire-heartbeats").checked && e.type === "gateway" && /^HEARTBEAT/.test(e.name)) return false;
  if (!f) return true;
  return (wireText(e) + JSON.stringify(e.request || e.payload || "") + JSON.stringify(e.response || "")).toLowerCase().includes(f);
}

function wireItem(e) {
  const li = el("li", { class: e.type === "violation" ? "violation" : "" });
  if (e.type === "rest") {
    li.append(el("span", { class: "w-kind" }, "REST"), `${e.method} ${e.path} `,
      el("span", { class: e.status < 400 ? "w-ok" : "w-bad" }, String(e.status)), ` ${e.operation} · ${e.account}`);
  } else if (e.type === "gateway") {
    li.append(el("span", { class: "w-kind" }, "GW"), `${e.direction === "sent" ? "→ den" : "← den"}  ${e.name} · ${e.account}`);
  } else {
    li.append(el("span", { class: "w-kind" }, "SPEC"), e.message);
  }
  li.addEventListener("click", () => {
    const open = li.querySelector("pre");
    if (open) { open.remove(); return; }
    const shown = e.type === "rest" ? { request: e.request, response: e.response } : (e.payload || e);
    li.append(el("pre", {}, JSON.stringify(shown, null, 2)));
  });
  return li;
}

function drawWire() {
  const list = $("wire-list");
  list.replaceChildren(...state.wire.filter(wireMatches).slice(-500).map(wireItem));
  list.scrollTop = list.scrollHeight;
}

function addWire(e) {
  state.wire.push(e);
  if (state.wire.length > 2000) state.wire.splice(0, state.wire.length - 2000);
  if (!state.wireOpen || !wireMatches(e)) return;
  const list = $("wire-list");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(wireItem(e));
  while (list.children.length > 500) list.firstChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// ---------- live updates ----------

let stateTimer = null;
function refreshStateSoon() {
  clearTimeout(stateTimer);
  stateTimer = setTimeout(loadState, 60);
}

function listen() {
  const source = new EventSource("/api/events");
  source.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    if (e.type === "changed") {
      if (e.part === "messages") { if (e.channel === state.channel) loadMessages(); }
      else refreshStateSoon();
    } else if (e.type === "lagged") {
      refreshStateSoon();
    } else {
      addWire(e);
    }
  };
  source.onopen = () => refreshStateSoon();
}

// ---------- wiring ----------

function wire() {
  $("who").addEventListener("change", (e) => {
    state.me = e.target.value;
    localStorage.setItem("den.as", state.me);
    loadState();
  });
  $("reset").addEventListener("click", async () => {
    if (!confirm("Start over? The server, its messages and den's memory of it are wiped.")) return;
    if (await act(api("POST", "/api/reset"))) notice("Starting over…");
  });
  const input = $("input");
  input.addEventListener("input", () => { autosize(); if (!input.value.startsWith("/")) { state.command = null; drawOptionsForm(); } drawPicker(); });
  input.addEventListener("keydown", (e) => {
    const picker = $("picker");
    if (!picker.hidden && ["ArrowDown", "ArrowUp", "Tab", "Enter"].includes(e.key)) {
      const items = picker.querySelectorAll(".cmd");
      if (e.key === "ArrowDown") state.pickerIndex = (state.pickerIndex + 1) % items.length;
      else if (e.key === "ArrowUp") state.pickerIndex = (state.pickerIndex + items.length - 1) % items.length;
      else { e.preventDefault(); items[state.pickerIndex].click(); return; }
      e.preventDefault();
      drawPicker();
      return;
    }
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); sendMessage(); }
    if (e.key === "Escape") { cancelCommand(); state.replyTo = null; drawReplying(); }
  });
  $("options-form").addEventListener("submit", runCommand);
  $("cancel-reply").addEventListener("click", () => { state.replyTo = null; drawReplying(); });
  $("attach").addEventListener("change", (e) => { state.files = [...e.target.files]; drawFilesChosen(); });
  $("wire-toggle").addEventListener("click", () => {
    state.wireOpen = !state.wireOpen;
    $("wire").hidden = !state.wireOpen;
    $("app").classList.toggle("wire-open", state.wireOpen);
    if (state.wireOpen) drawWire();
  });
  $("wire-close").addEventListener("click", () => $("wire-toggle").click());
  $("wire-filter").addEventListener("input", drawWire);
  $("wire-heartbeats").addEventListener("change", drawWire);
  $("wire-clear").addEventListener("click", () => { state.wire = []; drawWire(); });
}

async function start() {
  // A bug in the page shows itself rather than leaving a stale view.
  window.addEventListener("error", (e) => notice(`page error: ${e.message}`, true));
  window.addEventListener("unhandledrejection", (e) => notice(`page error: ${e.reason}`, true));
  wire();
  await loadState();
  const recent = await act(api("GET", "/api/wire"));
  for (const e of recent || []) state.wire.push(e);
  listen();
}

start();
