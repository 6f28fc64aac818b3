// Parley web client: the reference client of the public contract (REST + /chat + /notifications).
// Plain JavaScript modules, no build step. User text is only ever put in the page as text.

const $ = id => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
	const node = Object.assign(document.createElement(tag), props);
	for (const child of children) if (child != null) node.append(child);
	return node;
};

const state = {
	accessToken: null,
	me: null,
	users: new Map(), // id -> user
	conversations: [],
	current: null, // the open conversation
	messages: [], // of the open conversation, oldest first
	loadingOlder: false,
	noOlder: false,
	pendingAttachment: null,
	chat: null,
	notif: null,
	typingTimers: new Map(),
	notifications: [],
	blocked: new Set(),
	lastTypingSent: 0,
};

// ---------- errors: say what failed and what to do ----------

const HINTS = {
	RATE_LIMITED: "Slow down a little and try again.",
	SERVICE_UNAVAILABLE: "The server is busy or restarting; try again in a moment.",
	FORBIDDEN: "You are not allowed to do that here.",
	NOT_FOUND: "It is gone, or you no longer have access.",
	PAYLOAD_TOO_LARGE: "The file is too large.",
	UNSUPPORTED_MEDIA_TYPE: "This type of file cannot be sent.",
};

function showError(what, err) {
	const hint = HINTS[err?.code] ?? (err?.code === "VALIDATION_ERROR" ? "Check what you typed." : "Try again.");
	$("banner-text").textContent = `${what} failed: ${err?.message ?? err}. ${hint}`;
	$("banner").hidden = false;
	clearTimeout(showError.timer);
	showError.timer = setTimeout(() => ($("banner").hidden = true), 8000);
}
$("banner-close").addEventListener("click", () => ($("banner").hidden = true));
window.addEventListener("unhandledrejection", e => showError("Something", e.reason));

// ---------- REST ----------

async function api(method, path, body, retry = true) {
	const headers = { "Content-Type": "application/json" };
	if (state.accessToken) headers.Authorization = `Bearer ${state.accessToken}`;
	const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
	if (res.status === 401 && retry && state.accessToken && (await refresh())) return api(method, path, body, false);
	const text = await res.text();
	const data = text ? JSON.parse(text) : null;
	if (!res.ok) throw Object.assign(new Error(data?.message ?? res.statusText), { status: res.status, code: data?.code });
	return data;
}

/** A new access token from the httpOnly refresh cookie (rotated on every use). */
async function refresh() {
	const res = await fetch("/auth/refresh", { method: "POST", credentials: "same-origin" });
	if (!res.ok) return false;
	const data = await res.json();
	state.accessToken = data.accessToken;
	for (const socket of [state.chat, state.notif]) if (socket) socket.auth = { token: data.accessToken };
	return true;
}

async function rememberUsers(ids) {
	const missing = [...new Set(ids)].filter(id => !state.users.has(id));
	if (missing.length === 0) return;
	for (const u of await api("POST", "/users/batch", { ids: missing.slice(0, 100) })) state.users.set(u.id, u);
}

const nameOf = id => (id === state.me?.id ? "You" : state.users.get(id)?.username ?? `user ${id}`);

function titleOf(conv) {
	if (conv.type === "group") return conv.name || "Group";
	const other = conv.participants.find(p => p !== state.me.id);
	return conv.nicknames?.[other] || nameOf(other);
}

// ---------- auth ----------

function showAuth(message = "") {
	$("app-view").hidden = true;
	$("auth-view").hidden = false;
	$("auth-error").textContent = message;
}

async function enter(data) {
	state.accessToken = data.accessToken;
	state.me = data.user ?? (await api("GET", "/users/me"));
	state.users.set(state.me.id, state.me);
	$("auth-view").hidden = true;
	$("app-view").hidden = false;
	$("me").textContent = state.me.username;
	showAvatar();
	connectSockets();
	await Promise.all([loadConversations(), loadNotifications(), loadBlocks()]);
}

$("login-form").addEventListener("submit", async e => {
	e.preventDefault();
	const f = new FormData(e.target);
	const login = String(f.get("login"));
	try {
		await enter(await api("POST", "/auth/login", { [login.includes("@") ? "email" : "username"]: login, password: f.get("password") }));
	} catch (err) {
		showAuth(err.message);
	}
});

$("register-form").addEventListener("submit", async e => {
	e.preventDefault();
	const f = new FormData(e.target);
	try {
		await enter(await api("POST", "/auth/register", { username: f.get("username"), email: f.get("email"), password: f.get("password") }));
	} catch (err) {
		showAuth(err.message);
	}
});

$("logout").addEventListener("click", async () => {
	await fetch("/auth/logout", { method: "POST", credentials: "same-origin" });
	state.chat?.close();
	state.notif?.close();
	location.reload();
});

function showAvatar() {
	$("avatar").hidden = !state.me.avatar_url;
	if (state.me.avatar_url) $("avatar").src = state.me.avatar_url;
}

$("avatar-file").addEventListener("change", async e => {
	const file = e.target.files[0];
	if (!file) return;
	const base64 = await new Promise(resolve => {
		const reader = new FileReader();
		reader.onload = () => resolve(String(reader.result));
		reader.readAsDataURL(file);
	});
	try {
		const { user } = await api("POST", "/users/upload-avatar", { fileName: file.name, mimeType: file.type, base64 });
		state.me = user;
		showAvatar();
	} catch (err) {
		showError("Changing your picture", err);
	}
	e.target.value = "";
});

// ---------- sockets ----------

function emit(socket, event, payload) {
	return new Promise((resolve, reject) => {
		socket.timeout(10_000).emit(event, payload, (err, ack) => {
			if (err) return reject(err);
			if (!ack.ok) return reject(Object.assign(new Error(ack.error.message), { code: ack.error.code }));
			resolve(ack.data);
		});
	});
}

function connectSockets() {
	const options = { auth: { token: state.accessToken }, transports: ["websocket"] };
	const chat = (state.chat = io("/chat", options));
	const notif = (state.notif = io("/notifications", options));

	chat.on("connect", async () => {
		$("connection").textContent = "online";
		$("connection").classList.add("online");
		// Back after a drop: fetch what was missed, by seq, and rejoin the open room.
		if (state.current) {
			await emit(chat, "conversation:join", { conversationId: state.current.id }).catch(() => undefined);
			await catchUp();
		}
		await loadConversations().catch(() => undefined);
	});
	chat.on("disconnect", () => {
		$("connection").textContent = "reconnecting…";
		$("connection").classList.remove("online");
	});
	chat.on("connect_error", async err => {
		// An expired access token: refresh it, and Socket.IO retries with the new one.
		if (err.message === "Unauthorized" && !(await refresh())) showAuth("Your session ended, log in again.");
	});
	notif.on("connect_error", async err => {
		if (err.message === "Unauthorized") await refresh();
	});

	chat.on("message:created", async message => {
		if (state.current && message.conversation_id === state.current.id) {
			await rememberUsers([message.sender_id]);
			addMessages([message]);
			if (message.sender_id !== state.me.id) emit(chat, "message:read", { messageId: message.id }).catch(() => undefined);
		} else if (message.sender_id !== state.me.id) {
			emit(chat, "message:delivered", { messageId: message.id }).catch(() => undefined);
		}
		await loadConversations();
	});
	chat.on("message:updated", message => replaceMessage(message));
	chat.on("message:deleted", ({ messageId }) => {
		const m = state.messages.find(x => x.id === messageId);
		if (m) replaceMessage({ ...m, deleted: true, content: "", attachments: [] });
	});
	chat.on("message:status", ({ messageId, userId, status }) => {
		const m = state.messages.find(x => x.id === messageId);
		if (status === "delivered" && m && !m.delivered_to.includes(userId)) replaceMessage({ ...m, delivered_to: [...m.delivered_to, userId] });
	});
	chat.on("user:blocked", () => state.current && renderChatHeader());
	chat.on("user:unblocked", () => state.current && renderChatHeader());
	chat.on("message:read", ({ messageId, userId }) => {
		const m = state.messages.find(x => x.id === messageId);
		if (m && !m.seen_by.includes(userId)) replaceMessage({ ...m, seen_by: [...m.seen_by, userId] });
	});
	chat.on("typing", ({ conversationId, userId, isTyping }) => {
		if (!state.current || conversationId !== state.current.id) return;
		clearTimeout(state.typingTimers.get(userId));
		state.typingTimers.delete(userId);
		if (isTyping) state.typingTimers.set(userId, setTimeout(() => showTyping(), 4000));
		showTyping(isTyping ? userId : null);
	});
	for (const event of ["conversation:created", "conversation:updated", "conversation:invited", "request:accepted", "request:declined", "members:added", "members:removed"]) {
		chat.on(event, async payload => {
			await loadConversations();
			if (state.current && payload.conversationId === state.current.id && payload.conversation) {
				state.current = payload.conversation;
				renderChatHeader();
			}
		});
	}
	chat.on("conversation:deleted", ({ conversationId }) => {
		if (state.current?.id === conversationId) closeChat();
		loadConversations();
	});

	notif.on("notification:count", ({ count }) => setBadge(count));
	notif.on("notification:created", () => loadNotifications());
	notif.on("notification:read", () => loadNotifications());
	notif.on("notification:deleted", () => loadNotifications());
}

function showTyping(userId) {
	const names = [...state.typingTimers.keys()].map(nameOf);
	if (userId && !names.includes(nameOf(userId))) names.push(nameOf(userId));
	$("typing").textContent = names.length ? `${names.join(", ")} typing…` : "";
}

// ---------- conversations ----------

async function loadConversations() {
	const [list, requests] = await Promise.all([emit(state.chat, "conversation:list", { limit: 100 }), api("GET", "/conversations/requests")]);
	await rememberUsers([...list, ...requests].flatMap(c => c.participants));
	state.conversations = list;
	renderConversations();
	renderRequests(requests);
}

function conversationItem(conv) {
	const last = conv.last_message;
	const li = el(
		"li",
		{ className: conv.id === state.current?.id ? "active" : "", title: titleOf(conv) },
		el("span", { className: "title", textContent: `${conv.pinned ? "★ " : ""}${titleOf(conv)}${conv.muted ? " (muted)" : ""}` }),
		conv.unread_count > 0 ? el("span", { className: "unread", textContent: String(conv.unread_count) }) : el("span"),
		el("span", { className: "last", textContent: last ? `${nameOf(last.sender_id)}: ${last.deleted ? "(deleted)" : last.content || "[attachment]"}` : conv.status === "pending" ? "Request sent" : "" }),
	);
	li.dataset.id = conv.id;
	li.addEventListener("click", () => openConversation(conv));
	return li;
}

function renderConversations() {
	const sorted = [...state.conversations].sort((a, b) => Number(b.pinned) - Number(a.pinned));
	$("conversations").replaceChildren(...sorted.map(conversationItem));
	$("conversations-empty").hidden = sorted.length > 0;
}

function renderRequests(requests) {
	$("requests-title").hidden = requests.length === 0;
	$("requests").replaceChildren(
		...requests.map(conv => {
			const li = conversationItem(conv);
			const accept = el("button", { textContent: "Accept", className: "accept" });
			const decline = el("button", { textContent: "Decline", className: "decline" });
			accept.addEventListener("click", async e => {
				e.stopPropagation();
				const accepted = await emit(state.chat, "conversation:accept", { conversationId: conv.id });
				await loadConversations();
				await openConversation(accepted);
			});
			decline.addEventListener("click", async e => {
				e.stopPropagation();
				await emit(state.chat, "conversation:decline", { conversationId: conv.id });
				await loadConversations();
			});
			li.append(el("span", { className: "row" }, accept, decline));
			return li;
		}),
	);
}

async function openConversation(conv) {
	if (state.current && state.current.id !== conv.id) emit(state.chat, "conversation:leave", { conversationId: state.current.id }).catch(() => undefined);
	state.current = conv;
	state.messages = [];
	state.noOlder = false;
	state.typingTimers.clear();
	showTyping();
	$("chat-empty").hidden = true;
	$("chat").hidden = false;
	$("app-view").classList.add("chat-open");
	renderChatHeader();
	$("messages").replaceChildren();
	await emit(state.chat, "conversation:join", { conversationId: conv.id });
	const page = await emit(state.chat, "message:list", { conversationId: conv.id, limit: 30 });
	await rememberUsers(page.map(m => m.sender_id));
	addMessages(page.reverse());
	await emit(state.chat, "conversation:mark-read", { conversationId: conv.id });
	// Reading the chat reads its notifications too.
	for (const n of state.notifications.filter(x => !x.is_read && x.related_id === conv.id)) {
		await emit(state.notif, "notification:read", { notificationId: n.id }).catch(() => undefined);
	}
	await loadConversations();
	await showPresence();
}

/** For a private chat: whether the other person is online now. */
async function showPresence() {
	const conv = state.current;
	if (!conv || conv.type !== "private") return ($("chat-presence").textContent = "");
	const other = await api("GET", `/users/${conv.participants.find(p => p !== state.me.id)}`).catch(() => null);
	if (other && state.current === conv) $("chat-presence").textContent = other.status === "online" ? "● online" : "offline";
}

function closeChat() {
	if (state.current) emit(state.chat, "conversation:leave", { conversationId: state.current.id }).catch(() => undefined);
	state.current = null;
	$("chat").hidden = true;
	$("chat-empty").hidden = false;
	$("app-view").classList.remove("chat-open");
}
$("back").addEventListener("click", () => closeChat());

function renderChatHeader() {
	const conv = state.current;
	$("chat-title").textContent = titleOf(conv);
	const amAdmin = conv.admin_id === state.me.id;
	const amModerator = conv.moderator_ids.includes(state.me.id);
	$("chat-members").replaceChildren(
		...conv.participants.map(id => {
			const label = `${nameOf(id)}${conv.admin_id === id ? " (admin)" : conv.moderator_ids.includes(id) ? " (moderator)" : ""}`;
			// The admin manages everyone, moderators manage plain members (CONTRACT.md "Group roles").
			const plain = conv.admin_id !== id && !conv.moderator_ids.includes(id);
			if (conv.type === "private" && id !== state.me.id) {
				const button = el("button", { className: "member", textContent: label, title: "Set a nickname" });
				button.addEventListener("click", async () => {
					const nickname = prompt(`Nickname for ${nameOf(id)} in this chat (empty removes it)`, conv.nicknames?.[id] ?? "");
					if (nickname === null) return;
					await api("POST", `/conversations/${conv.id}/nicknames`, { targetUserId: id, nickname: nickname.trim() || null });
					state.current = await emit(state.chat, "conversation:get", { conversationId: conv.id });
					renderChatHeader();
					await loadConversations();
				});
				return button;
			}
			if (conv.type !== "group" || id === state.me.id || !(amAdmin || (amModerator && plain))) return el("span", { className: "member", textContent: label });
			const button = el("button", { className: "member", textContent: label, title: "Manage this member" });
			button.addEventListener("click", () => manageMember(id));
			return button;
		}),
	);
	$("mute").textContent = conv.muted ? "Unmute" : "Mute";
	$("pin").textContent = conv.pinned ? "Unpin" : "Pin";
	const isGroup = conv.type === "group";
	const manager = isGroup && (conv.admin_id === state.me.id || conv.moderator_ids.includes(state.me.id));
	$("add-member").hidden = !manager;
	$("block").hidden = isGroup;
	const other = conv.participants.find(p => p !== state.me.id);
	$("block").textContent = state.blocked.has(other) ? "Unblock" : "Block";
	$("leave").hidden = !isGroup;
	$("composer").hidden = conv.status === "declined";
	$("text").placeholder = conv.status === "pending" && conv.initiator_id !== state.me.id ? "Accept the request to reply" : "Message";
}

async function manageMember(userId) {
	const conv = state.current;
	const isMod = conv.moderator_ids.includes(userId);
	const choices = conv.admin_id === state.me.id ? [isMod ? "demote" : "promote", "remove"] : ["remove"];
	const choice = prompt(`${nameOf(userId)}: type ${choices.join(" or ")}`)?.trim().toLowerCase();
	if (!choice || !choices.includes(choice)) return;
	const event = { promote: "conversation:promote-moderator", demote: "conversation:demote-moderator", remove: "conversation:remove-member" }[choice];
	try {
		state.current = await emit(state.chat, event, { conversationId: conv.id, userId });
		renderChatHeader();
	} catch (err) {
		showError(`${choice} ${nameOf(userId)}`, err);
	}
}

/** Catch up after a reconnect: everything after the last seq this page has. */
async function catchUp() {
	const last = state.messages[state.messages.length - 1];
	const missed = await emit(state.chat, "message:list", { conversationId: state.current.id, after: last ? last.seq : 0, limit: 100 });
	await rememberUsers(missed.map(m => m.sender_id));
	addMessages(missed);
}

/** Scrolling to the top loads the page before the oldest seq shown. */
$("messages").addEventListener("scroll", async () => {
	if ($("messages").scrollTop > 40 || state.loadingOlder || state.noOlder || !state.current || state.messages.length === 0) return;
	state.loadingOlder = true;
	try {
		const older = await emit(state.chat, "message:list", { conversationId: state.current.id, before: state.messages[0].seq, limit: 30 });
		if (older.length === 0) state.noOlder = true;
		await rememberUsers(older.map(m => m.sender_id));
		const height = $("messages").scrollHeight;
		addMessages(older.reverse(), true);
		$("messages").scrollTop = $("messages").scrollHeight - height;
	} finally {
		state.loadingOlder = false;
	}
});

function messageItem(m) {
	const mine = m.sender_id === state.me.id;
	const li = el("li", { className: `message${mine ? " mine" : ""}${m.type === "system" ? " system" : ""}${m.deleted ? " deleted" : ""}` });
	li.dataset.id = m.id;
	li.dataset.seq = String(m.seq);
	if (m.type === "system") {
		li.textContent = `${nameOf(m.system_data?.actorId ?? m.sender_id)} ${m.content}${m.system_data?.userId ? ` (${nameOf(m.system_data.userId)})` : ""}`;
		return li;
	}
	const content = el("div", { className: "content", textContent: m.deleted ? "message deleted" : m.content });
	li.append(el("div", { className: "meta" }, el("strong", { textContent: nameOf(m.sender_id) }), el("span", { textContent: new Date(m.created_at).toLocaleTimeString() })), content);
	for (const url of m.deleted ? [] : m.attachments) {
		li.append(m.type === "image" ? el("a", { href: url, target: "_blank" }, el("img", { src: url, alt: "attachment" })) : el("a", { href: url, textContent: "Download attachment", download: "" }));
	}
	const meta = el("div", { className: "meta" });
	if (m.edited_at && !m.deleted) meta.append(el("span", { textContent: "edited" }));
	if (mine && m.seen_by.length > 0) meta.append(el("span", { className: "seen", textContent: "✓ seen" }));
	else if (mine && m.delivered_to.length > 0) meta.append(el("span", { className: "delivered", textContent: "delivered" }));
	if (mine && !m.deleted) {
		const edit = el("button", { textContent: "Edit" });
		edit.addEventListener("click", async () => {
			const text = prompt("Edit message", m.content);
			if (text && text.trim()) replaceMessage(await emit(state.chat, "message:edit", { messageId: m.id, content: text }));
		});
		const del = el("button", { textContent: "Delete" });
		del.addEventListener("click", () => emit(state.chat, "message:delete", { messageId: m.id }).catch(err => showError("Deleting the message", err)));
		meta.append(edit, del);
	}
	li.append(meta);
	return li;
}

function addMessages(list, prepend = false) {
	const known = new Set(state.messages.map(m => m.id));
	const fresh = list.filter(m => !known.has(m.id));
	if (fresh.length === 0) return;
	state.messages = prepend ? [...fresh, ...state.messages] : [...state.messages, ...fresh];
	state.messages.sort((a, b) => a.seq - b.seq);
	const box = $("messages");
	const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
	box.replaceChildren(...state.messages.map(messageItem));
	if (!prepend && atBottom) box.scrollTop = box.scrollHeight;
}

function replaceMessage(message) {
	const i = state.messages.findIndex(m => m.id === message.id);
	if (i < 0) return;
	state.messages[i] = message;
	const node = $("messages").querySelector(`[data-id="${CSS.escape(message.id)}"]`);
	node?.replaceWith(messageItem(message));
}

// ---------- composer ----------

$("composer").addEventListener("submit", async e => {
	e.preventDefault();
	const content = $("text").value.trim();
	if (!state.current || (!content && !state.pendingAttachment)) return;
	const attachments = state.pendingAttachment ? [state.pendingAttachment.fileId] : [];
	// The clientId makes a retried send safe: the server keeps one message per clientId.
	const clientId = crypto.randomUUID();
	$("text").value = "";
	state.pendingAttachment = null;
	$("pending-attachment").textContent = "";
	try {
		addMessages([await emit(state.chat, "message:send", { conversationId: state.current.id, content, attachments, clientId })]);
	} catch (err) {
		showError("Sending the message", err);
	}
});

$("text").addEventListener("input", () => {
	if (!state.current || Date.now() - state.lastTypingSent < 1500) return;
	state.lastTypingSent = Date.now();
	emit(state.chat, "typing", { conversationId: state.current.id, isTyping: true }).catch(() => undefined);
});

$("file").addEventListener("change", async e => {
	const file = e.target.files[0];
	if (!file) return;
	const form = new FormData();
	form.append("file", file);
	$("pending-attachment").textContent = "uploading…";
	const res = await fetch("/upload/single", { method: "POST", body: form, headers: { Authorization: `Bearer ${state.accessToken}` } });
	const data = await res.json();
	if (!res.ok) {
		$("pending-attachment").textContent = "";
		e.target.value = "";
		return showError(`Uploading ${file.name}`, data);
	}
	state.pendingAttachment = data;
	$("pending-attachment").textContent = `Attached: ${data.fileName}`;
	e.target.value = "";
});

// ---------- conversation settings ----------

async function loadBlocks() {
	state.blocked = new Set((await api("GET", "/blocks")).map(b => b.targetUserId));
}

$("block").addEventListener("click", async () => {
	const other = state.current.participants.find(p => p !== state.me.id);
	const blocking = !state.blocked.has(other);
	if (blocking && !confirm(`Block ${nameOf(other)}? Neither of you can message the other.`)) return;
	await emit(state.chat, blocking ? "user:block" : "user:unblock", { targetUserId: other });
	await loadBlocks();
	renderChatHeader();
});
$("clear").addEventListener("click", async () => {
	if (!confirm("Clear this conversation's history for you? The others keep theirs.")) return;
	await api("DELETE", `/conversations/${state.current.id}/messages`);
	state.messages = [];
	$("messages").replaceChildren();
	await loadConversations();
});

$("mute").addEventListener("click", async () => {
	await api("POST", `/conversations/${state.current.id}/mute`, { muted: !state.current.muted });
	state.current = await emit(state.chat, "conversation:get", { conversationId: state.current.id });
	renderChatHeader();
	await loadConversations();
});
$("pin").addEventListener("click", async () => {
	await api("POST", `/conversations/${state.current.id}/pin`, { pinned: !state.current.pinned });
	state.current = await emit(state.chat, "conversation:get", { conversationId: state.current.id });
	renderChatHeader();
	await loadConversations();
});
$("hide").addEventListener("click", async () => {
	await api("POST", `/conversations/${state.current.id}/hide`, { hidden: true });
	closeChat();
	await loadConversations();
});
$("leave").addEventListener("click", async () => {
	if (!confirm("Leave this group?")) return;
	await emit(state.chat, "conversation:remove-member", { conversationId: state.current.id, userId: state.me.id });
	closeChat();
	await loadConversations();
});
$("add-member").addEventListener("click", async () => {
	const name = prompt("Username to add");
	if (!name) return;
	const [user] = await api("GET", `/users/search?q=${encodeURIComponent(name)}&limit=1`);
	if (!user) return showError("Adding a member", { message: `nobody is called ${name}`, code: "NOT_FOUND" });
	state.current = await emit(state.chat, "conversation:add-member", { conversationId: state.current.id, userId: user.id });
	renderChatHeader();
});

// ---------- people search and new conversations ----------

const picked = new Set();

$("search").addEventListener("input", async () => {
	const q = $("search").value.trim();
	if (!q) return $("search-results").replaceChildren();
	const users = (await api("GET", `/users/search?q=${encodeURIComponent(q)}&limit=10`)).filter(u => u.id !== state.me.id);
	for (const u of users) state.users.set(u.id, u);
	$("search-results").replaceChildren(
		...users.map(u => {
			const box = el("input", { type: "checkbox", checked: picked.has(u.id), title: "Pick for a group" });
			box.addEventListener("change", () => {
				if (box.checked) picked.add(u.id);
				else picked.delete(u.id);
				$("group-builder").hidden = picked.size < 2;
			});
			const chat = el("button", { textContent: "Chat" });
			chat.addEventListener("click", async () => {
				const conv = await emit(state.chat, "conversation:create", { type: "private", participants: [u.id] });
				$("search").value = "";
				$("search-results").replaceChildren();
				await loadConversations();
				await openConversation(conv);
			});
			const li = el("li", {}, box, el("span", { textContent: u.username }), chat);
			li.dataset.username = u.username;
			return li;
		}),
	);
});
$("search-form").addEventListener("submit", e => e.preventDefault());

$("message-search-form").addEventListener("submit", async e => {
	e.preventDefault();
	const query = $("message-search").value.trim();
	if (!query) return $("message-results").replaceChildren();
	const { messages, total } = await emit(state.chat, "message:search", { query, limit: 20 });
	await rememberUsers(messages.map(m => m.sender_id));
	$("message-results").replaceChildren(
		el("li", { className: "empty-list", textContent: total === 0 ? "No message matches." : `${total} found` }),
		...messages.map(m => {
			const li = el("li", { className: "found", textContent: `${nameOf(m.sender_id)}: ${m.content}` });
			li.addEventListener("click", async () => {
				const conv = state.conversations.find(c => c.id === m.conversation_id) ?? (await emit(state.chat, "conversation:get", { conversationId: m.conversation_id }));
				await openConversation(conv);
			});
			return li;
		}),
	);
});

$("create-group").addEventListener("click", async () => {
	const conv = await emit(state.chat, "conversation:create", { type: "group", participants: [...picked], name: $("group-name").value.trim() || undefined });
	picked.clear();
	$("group-builder").hidden = true;
	$("search-results").replaceChildren();
	await loadConversations();
	await openConversation(conv);
});

// ---------- notifications ----------

function setBadge(count) {
	$("badge").hidden = count === 0;
	$("badge").textContent = String(count);
}

async function loadNotifications() {
	const [list, { count }] = await Promise.all([api("GET", "/notifications?limit=30"), api("GET", "/notifications/unread/count")]);
	setBadge(count);
	state.notifications = list;
	$("notification-list").replaceChildren(
		...list.map(n => {
			const remove = el("button", { textContent: "×", title: "Delete", ariaLabel: "Delete notification" });
			remove.addEventListener("click", async e => {
				e.stopPropagation();
				await emit(state.notif, "notification:delete", { notificationId: n.id });
			});
			const li = el("li", { className: n.is_read ? "" : "unread" }, el("span", { textContent: `${n.title}: ${n.content}` }), remove);
			li.addEventListener("click", async () => {
				if (!n.is_read) await emit(state.notif, "notification:read", { notificationId: n.id });
				const conv = n.related_id && state.conversations.find(c => c.id === n.related_id);
				if (conv) await openConversation(conv);
				$("notifications").hidden = true;
			});
			return li;
		}),
	);
}

$("bell").addEventListener("click", () => {
	$("notifications").hidden = !$("notifications").hidden;
});
$("read-all").addEventListener("click", () => emit(state.notif, "notification:read-all", {}));

// ---------- start: a refresh cookie means we are still logged in ----------

(async () => {
	if (await refresh()) await enter({ accessToken: state.accessToken });
	else showAuth();
})();
