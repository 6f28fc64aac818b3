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
	refreshTimer: null,
	refreshDue: Infinity, // Date.now() at which the access token should be renewed
	passwordChange: null, // while a password change runs: resolves true once logged in again
	sessionsEnded: 0, // counts endSession calls: an answer for an ended session is dropped
};

// ---------- errors: say what failed and what to do ----------

const HINTS = {
	RATE_LIMITED: "Slow down a little and try again.",
	SERVICE_UNAVAILABLE: "The server is busy or restarting; try again in a moment.",
	FORBIDDEN: "You are not allowed to do that here.",
	NOT_FOUND: "It is gone, or you no longer have access.",
	PAYLOAD_TOO_LARGE: "The file is too large.",
	UNSUPPORTED_MEDIA_TYPE: "This type of file cannot be sent.",
	TOO_MANY_SOCKETS: "Close some Parley windows, then reload this one.",
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

// The refresh token stays in its HttpOnly cookie: with this header the server leaves it out of the body.
const COOKIE_TRANSPORT = { "X-Refresh-Transport": "cookie" };

async function api(method, path, body, retry = true) {
	const authCall = path.startsWith("/auth/");
	const headers = { "Content-Type": "application/json", ...(authCall ? COOKIE_TRANSPORT : {}) };
	if (state.accessToken && !authCall) headers.Authorization = `Bearer ${state.accessToken}`;
	const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
	if (res.status === 401 && retry && state.accessToken && !authCall) {
		const outcome = await refresh();
		if (outcome === "ok") return api(method, path, body, false);
		if (outcome === "ended" && state.me) endSession(SESSION_ENDED);
	}
	const text = await res.text();
	const data = text ? JSON.parse(text) : null;
	if (!res.ok) throw Object.assign(new Error(data?.message ?? res.statusText), { status: res.status, code: data?.code });
	return data;
}

// ---------- session: the access token, renewed before it expires ----------

const SESSION_ENDED = "Your session ended, log in again.";

// Not a secret: it only says "this browser has a refresh cookie", so a visitor who never
// logged in makes no /auth/refresh call (and sees no failed request) when the page loads.
const SESSION_MARKER = "parley.session";
function markSession(on) {
	try {
		if (on) window.localStorage.setItem(SESSION_MARKER, "1");
		else window.localStorage.removeItem(SESSION_MARKER);
	} catch {
		// storage disabled: the marker only saves a request
	}
}
function hasSessionMarker() {
	try {
		return window.localStorage.getItem(SESSION_MARKER) === "1";
	} catch {
		return true; // cannot tell: ask the server
	}
}

/** `iat` and `exp` (seconds) of a JWT; the client trusts nothing else in it. */
function tokenTimes(token) {
	try {
		const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
		const { iat, exp } = JSON.parse(window.atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
		return typeof exp === "number" ? { iat: typeof iat === "number" ? iat : null, exp } : null;
	} catch {
		return null;
	}
}

/**
 * Renew at 75 % of the token's life or 60 s before it ends, whichever is sooner, but not sooner
 * than a few seconds. Timed from when the token arrived, so a wrong clock on this machine does
 * not matter (the server disconnects a socket whose token expired).
 */
function scheduleRefresh(token) {
	clearTimeout(state.refreshTimer);
	const times = tokenTimes(token);
	if (!times) return;
	const life = (times.exp - (times.iat ?? Math.floor(Date.now() / 1000))) * 1000;
	const delay = Math.min(2 ** 31 - 1, Math.max(Math.min(life * 0.75, life - 60_000), Math.min(5_000, life / 2)));
	state.refreshDue = Date.now() + delay;
	state.refreshTimer = setTimeout(renewNow, delay);
}

async function renewNow() {
	clearTimeout(state.refreshTimer);
	if (!state.me) return;
	const outcome = await refresh();
	if (!state.me) return;
	if (outcome === "ended") endSession(SESSION_ENDED);
	// Server busy or unreachable: try again soon; if the token runs out first, the socket's
	// disconnect handler takes over.
	else if (outcome === "failed") state.refreshTimer = setTimeout(renewNow, 5_000);
}

// A tab that slept (timers held back) renews as soon as it is looked at again.
document.addEventListener("visibilitychange", () => {
	if (document.visibilityState === "visible" && state.me && Date.now() >= state.refreshDue) renewNow();
});

/** A new access token: used for every call and socket from now on, and renewed before it expires. */
function setToken(token) {
	state.accessToken = token;
	markSession(true);
	scheduleRefresh(token);
	// Connected sockets take the new token and live on; disconnected ones send it when they connect.
	for (const socket of [state.chat, state.notif]) {
		if (!socket?.connected) continue;
		socket.timeout(10_000).emit("auth:refresh", { token }, (err, ack) => {
			// Refused (not merely unanswered): connect again with the new token now rather than
			// be ended when the old one expires.
			if (!err && ack && !ack.ok && socket.connected && state.accessToken === token) {
				socket.disconnect();
				socket.connect();
			}
		});
	}
}

let refreshing = null;
/**
 * A new access token from the HttpOnly refresh cookie (rotated on every use): "ok", "ended" (the
 * server refused the cookie: the login is over) or "failed" (unreachable or busy; try later).
 * One at a time: presenting a refresh token twice counts as theft and ends the login.
 */
async function refresh() {
	// A password change logs in again by itself: wait for that rather than spend a dead cookie.
	while (state.passwordChange) if (await state.passwordChange) return "ok";
	refreshing ??= withRefreshLock(refreshOnce).finally(() => (refreshing = null));
	return refreshing;
}

/** Tabs of one browser share the cookie: across tabs too, one refresh at a time. */
function withRefreshLock(fn) {
	const locks = window.navigator.locks;
	return locks ? locks.request("parley.refresh", fn) : fn();
}

async function refreshOnce() {
	const ended = state.sessionsEnded;
	let res;
	try {
		res = await fetch("/auth/refresh", { method: "POST", headers: COOKIE_TRANSPORT, credentials: "same-origin" });
	} catch {
		return "failed";
	}
	if (res.status >= 500 || res.status === 429) return "failed";
	if (!res.ok) {
		markSession(false);
		return "ended";
	}
	const { accessToken } = await res.json();
	// Logged out while this was under way: the token belongs to a login that is over.
	if (ended !== state.sessionsEnded) return "ended";
	setToken(accessToken);
	return "ok";
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
	setToken(data.accessToken);
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
		e.target.reset();
	} catch (err) {
		showAuth(err.message);
	}
});

$("register-form").addEventListener("submit", async e => {
	e.preventDefault();
	const f = new FormData(e.target);
	try {
		await enter(await api("POST", "/auth/register", { username: f.get("username"), email: f.get("email"), password: f.get("password") }));
		e.target.reset();
	} catch (err) {
		showAuth(err.message);
	}
});

$("logout").addEventListener("click", async () => {
	// Sockets first, by this client: their end is not mistaken for a session ended elsewhere.
	for (const socket of [state.chat, state.notif]) socket?.disconnect();
	await fetch("/auth/logout", { method: "POST", credentials: "same-origin" }).catch(() => undefined);
	endSession("");
});

/** Forget this login here: no token, no marker, sockets closed, nothing of it on screen. */
function endSession(message) {
	state.sessionsEnded++;
	clearTimeout(state.refreshTimer);
	state.refreshDue = Infinity;
	markSession(false);
	state.accessToken = null;
	state.me = null;
	for (const socket of [state.chat, state.notif]) {
		if (!socket) continue;
		socket.sendBuffer = []; // nothing queued by this login is sent by the next one
		socket.disconnect();
	}
	state.current = null;
	state.messages = [];
	state.conversations = [];
	state.notifications = [];
	state.typingTimers.clear();
	$("chat").hidden = true;
	$("chat-empty").hidden = false;
	$("app-view").classList.remove("chat-open");
	for (const id of ["conversations", "requests", "messages", "notification-list", "search-results", "message-results"]) $(id).replaceChildren();
	$("requests-title").hidden = true;
	$("notifications").hidden = true;
	$("password-form").hidden = true;
	setBadge(0);
	setConnection("offline");
	showAuth(message);
}

// Changing the password ends every login of the account, this one too: log in again with it.
$("password-button").addEventListener("click", () => {
	$("password-form").hidden = !$("password-form").hidden;
	if (!$("password-form").hidden) $("password-form").elements.oldPassword.focus();
});
$("password-cancel").addEventListener("click", () => {
	$("password-form").reset();
	$("password-form").hidden = true;
});
$("password-form").addEventListener("submit", async e => {
	e.preventDefault();
	const f = new FormData(e.target);
	const newPassword = String(f.get("newPassword"));
	const username = state.me.username;
	await refreshing?.catch(() => undefined);
	let loggedIn;
	// Set before the request: the server may end this login's sockets and tokens before it answers.
	state.passwordChange = new Promise(resolve => (loggedIn = resolve));
	try {
		try {
			// No refresh-and-retry here: a refresh would wait for this very change to finish.
			await api("POST", "/users/change-password", { oldPassword: f.get("oldPassword"), newPassword }, false);
		} catch (err) {
			loggedIn(false);
			return showError("Changing the password", err);
		}
		try {
			setToken((await api("POST", "/auth/login", { username, password: newPassword })).accessToken);
			loggedIn(true);
		} catch {
			loggedIn(false);
			return endSession("Your password was changed. Log in again with the new one.");
		}
		e.target.reset();
		e.target.hidden = true;
		// Sockets the server already ended come back with the new token.
		for (const socket of [state.chat, state.notif]) if (socket && !socket.connected) socket.connect();
	} finally {
		state.passwordChange = null;
	}
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

function setConnection(status) {
	$("connection").textContent = status;
	$("connection").classList.toggle("online", status === "online");
}

const ENDED_MESSAGES = {
	password_changed: "Your password was changed. Log in again with the new one.",
	account_deleted: "Your account was deleted.",
};

/**
 * The server ended a socket ("io server disconnect") or refused it at connect: Socket.IO does not
 * try again by itself. A refreshed token brings it back (the connect handler catches up on what
 * was missed); a login that is over shows the login view. Whatever the reason given, one refresh
 * decides: a logout or role change elsewhere may end this user's sockets on every device, while
 * this device's own login goes on.
 */
async function resume(socket) {
	const reason = socket.endedReason;
	socket.endedReason = null;
	if (!state.me) return;
	if (reason === "too_many_sockets") {
		// Coming back would push out another window of this user, which would come back too.
		setConnection("offline");
		return showError("Staying connected", { message: "too many windows are open", code: "TOO_MANY_SOCKETS" });
	}
	// Refused again right after a successful refresh: something else is wrong, do not loop.
	if ((socket.resumes = (socket.resumes ?? 0) + 1) > 3) return endSession(SESSION_ENDED);
	const outcome = await refresh();
	if (!state.me) return;
	if (outcome === "ok") socket.connect();
	else if (outcome === "failed") setTimeout(() => resume(socket), 3_000);
	else endSession(ENDED_MESSAGES[reason] ?? SESSION_ENDED);
}

function connectSockets() {
	// Once per page: a later login reconnects the same sockets (io() would hand out the same
	// objects anyway) with whatever token is current, as `auth` is read at every connect.
	if (state.chat) {
		for (const socket of [state.chat, state.notif]) socket.connect();
		return;
	}
	const options = { auth: cb => cb({ token: state.accessToken }), transports: ["websocket"] };
	const chat = (state.chat = io("/chat", options));
	const notif = (state.notif = io("/notifications", options));

	for (const socket of [chat, notif]) {
		socket.on("connect", () => (socket.resumes = 0));
		// Sent just before the server disconnects this socket, saying why.
		socket.on("session:ended", ({ reason } = {}) => (socket.endedReason = reason));
		socket.on("disconnect", reason => {
			if (reason === "io server disconnect") resume(socket);
		});
		// `active` is false when the server refused the socket (a token it does not accept);
		// after a network error it stays true and Socket.IO keeps retrying by itself.
		socket.on("connect_error", () => {
			if (!socket.active) resume(socket);
		});
	}

	chat.on("connect", async () => {
		setConnection("online");
		// Back after a drop: fetch what was missed, by seq, and rejoin the open room.
		if (state.current) {
			await emit(chat, "conversation:join", { conversationId: state.current.id }).catch(() => undefined);
			await catchUp();
		}
		await loadConversations().catch(() => undefined);
	});
	chat.on("disconnect", reason => {
		if (state.me) setConnection(reason === "io client disconnect" ? "offline" : "reconnecting…");
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
			// The admin manages everyone, moderators manage plain members (conversations.removeMember).
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
	// No marker: nobody logged in from this browser (or logged out), so there is no cookie to try.
	const outcome = hasSessionMarker() ? await refresh() : "ended";
	if (outcome === "ok") await enter({ accessToken: state.accessToken });
	else showAuth(outcome === "failed" ? "The server is busy or restarting; reload in a moment." : "");
})();
