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
	replyTo: null, // the message the composer answers, if any
	thread: null, // { root, messages, noOlder } while a thread is open
	pins: [], // pinned messages of the open conversation, most recently pinned first
	pinIndex: 0, // which of them the pinned bar shows
	presence: new Map(), // userId -> { status, last_seen_at }, from presence:subscribe and presence:changed
	presenceSubs: new Set(), // user ids this page's /chat socket subscribed to
	presenceSync: Promise.resolve(),
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

/** Everyone a page of messages names: senders, reactors, the mentioned, the quoted. */
const userIdsOf = messages =>
	messages.flatMap(m => [m.sender_id, ...(m.reactions ?? []).flatMap(r => r.user_ids), ...(m.mentions ?? []), ...(m.reply_to ? [m.reply_to.sender_id] : []), ...(m.pinned_by ? [m.pinned_by] : [])]);

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
	closeThread();
	setReplyTo(null);
	state.pins = [];
	state.presence.clear();
	state.presenceSubs.clear();
	$("chat").hidden = true;
	$("chat-empty").hidden = false;
	$("app-view").classList.remove("chat-open");
	for (const id of ["conversations", "requests", "messages", "notification-list", "search-results", "message-results"]) $(id).replaceChildren();
	$("requests-title").hidden = true;
	$("notifications").hidden = true;
	$("password-form").hidden = true;
	showSettings(false);
	setBadge(0);
	setConnection("offline");
	showAuth(message);
}

// Changing the password ends every login of the account, this one too: log in again with it.
$("password-button").addEventListener("click", () => {
	showSettings(false);
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

// ---------- settings: who sees when I was last online ----------

function showSettings(open) {
	$("settings").hidden = !open;
	$("settings-button").setAttribute("aria-expanded", String(open));
	if (!open) return;
	$("password-form").hidden = true;
	$("show-last-seen").checked = state.me?.show_last_seen !== false;
	$("show-last-seen").focus();
}
$("settings-button").addEventListener("click", () => showSettings($("settings").hidden));
$("settings-close").addEventListener("click", () => showSettings(false));
$("show-last-seen").addEventListener("change", async e => {
	const show = e.target.checked;
	try {
		state.me = { ...state.me, ...(await api("PATCH", "/users/me", { show_last_seen: show })), show_last_seen: show };
	} catch (err) {
		e.target.checked = !show;
		return showError("Changing who sees your last seen time", err);
	}
	// Hiding mine hides theirs from me too: ask again for what may now be shown.
	resubscribePresence();
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
		// Subscriptions live with the socket: a new socket subscribes again (after loadConversations).
		state.presenceSubs.clear();
		// Back after a drop: fetch what was missed, by seq, and rejoin the open room.
		if (state.current) {
			await emit(chat, "conversation:join", { conversationId: state.current.id }).catch(() => undefined);
			await catchUp();
			loadPins();
			if (state.thread) loadThread(state.thread.root);
		}
		await loadConversations().catch(() => undefined);
	});
	chat.on("disconnect", reason => {
		if (state.me) setConnection(reason === "io client disconnect" ? "offline" : "reconnecting…");
	});

	chat.on("message:created", async message => {
		if (state.current && message.conversation_id === state.current.id) {
			await rememberUsers(userIdsOf([message]));
			// Whoever sent it has stopped typing it.
			if (state.typingTimers.has(message.sender_id)) {
				clearTimeout(state.typingTimers.get(message.sender_id));
				state.typingTimers.delete(message.sender_id);
				showTyping();
			}
			addMessages([message]);
			if (state.thread && message.reply_to?.id === state.thread.root.id) addThreadMessages([message]);
			if (message.sender_id !== state.me.id) emit(chat, "message:read", { messageId: message.id }).catch(() => undefined);
		} else if (message.sender_id !== state.me.id) {
			emit(chat, "message:delivered", { messageId: message.id }).catch(() => undefined);
		}
		await loadConversations();
	});
	// Sent to every participant alike: `me` in its reactions is not about this user, so derive it.
	chat.on("message:updated", async message => {
		const known = findMessage(message.id);
		if (!known) return;
		await rememberUsers(userIdsOf([message]));
		updateMessage({ ...message, reactions: myReactions(message.reactions ?? [], known) });
	});
	chat.on("message:deleted", ({ messageId }) => {
		const m = findMessage(messageId);
		if (m) updateMessage({ ...m, deleted: true, content: "", attachments: [], reactions: [] });
		// Quotes of it now say it is gone.
		for (const reply of [...state.messages, ...(state.thread?.messages ?? [])].filter(x => x.reply_to?.id === messageId)) {
			updateMessage({ ...reply, reply_to: { ...reply.reply_to, excerpt: null } });
		}
		if (state.pins.some(p => p.id === messageId)) loadPins();
	});
	chat.on("message:reactions", async ({ messageId, reactions }) => {
		const m = findMessage(messageId);
		if (!m) return;
		await rememberUsers(reactions.flatMap(r => r.user_ids));
		updateMessage({ ...m, reactions: myReactions(reactions, m) });
	});
	for (const event of ["message:pinned", "message:unpinned"]) {
		chat.on(event, ({ conversationId, messageId, userId }) => {
			if (state.current?.id !== conversationId) return;
			const m = findMessage(messageId);
			const pinned = event === "message:pinned";
			if (m) updateMessage({ ...m, pinned_at: pinned ? m.pinned_at ?? new Date().toISOString() : null, pinned_by: pinned ? userId : null });
			loadPins();
		});
	}
	chat.on("presence:changed", ({ userId, status, last_seen_at }) => {
		state.presence.set(userId, { status, last_seen_at });
		showPresenceOf(userId);
	});
	chat.on("message:status", ({ messageId, userId, status }) => {
		const m = findMessage(messageId);
		if (status === "delivered" && m && !m.delivered_to.includes(userId)) updateMessage({ ...m, delivered_to: [...m.delivered_to, userId] });
	});
	chat.on("user:blocked", () => state.current && renderChatHeader());
	chat.on("user:unblocked", () => state.current && renderChatHeader());
	chat.on("message:read", ({ messageId, userId }) => {
		const m = findMessage(messageId);
		if (m && !m.seen_by.includes(userId)) updateMessage({ ...m, seen_by: [...m.seen_by, userId] });
	});
	chat.on("typing", ({ conversationId, userId, isTyping }) => {
		if (!state.current || conversationId !== state.current.id) return;
		clearTimeout(state.typingTimers.get(userId));
		state.typingTimers.delete(userId);
		// A "typing" that is not renewed runs out (the tab may have closed mid-word).
		if (isTyping)
			state.typingTimers.set(
				userId,
				setTimeout(() => {
					state.typingTimers.delete(userId);
					showTyping();
				}, 4000),
			);
		showTyping(isTyping ? userId : null);
	});
	for (const event of ["conversation:created", "conversation:updated", "conversation:invited", "request:accepted", "request:declined", "members:added", "members:removed"]) {
		chat.on(event, async payload => {
			await loadConversations();
			if (state.current && payload.conversationId === state.current.id && payload.conversation) {
				state.current = payload.conversation;
				renderChatHeader();
				// Roles decide who may pin: the messages' actions follow.
				renderMessages();
				renderPins();
				syncPresence();
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
	state.requests = requests;
	renderConversations();
	renderRequests(requests);
	syncPresence();
}

const partnerOf = conv => (conv.type === "private" ? conv.participants.find(p => p !== state.me.id) ?? null : null);

/** A picture of this server only (the page's CSP allows no other), else the name's first letter. */
function avatarOf(url, name) {
	if (typeof url === "string" && url.startsWith("/")) return el("img", { className: "avatar", src: url, alt: "" });
	return el("span", { className: "avatar initial", textContent: (name || "?").slice(0, 1).toUpperCase(), ariaHidden: "true" });
}

/** The conversation's picture, with the other person's presence dot in a private chat. */
function conversationAvatar(conv) {
	const other = partnerOf(conv);
	const url = conv.type === "group" ? conv.avatar : state.users.get(other)?.avatar_url;
	return el("span", { className: "avatar-box" }, avatarOf(url, titleOf(conv)), other ? presenceDot(other) : null);
}

function conversationItem(conv) {
	const last = conv.last_message;
	const mentions = conv.unread_mentions ?? 0;
	const li = el(
		"li",
		{ className: conv.id === state.current?.id ? "active" : "", title: titleOf(conv) },
		conversationAvatar(conv),
		el("span", { className: "title", textContent: `${conv.pinned ? "★ " : ""}${titleOf(conv)}${conv.muted ? " (muted)" : ""}` }),
		el(
			"span",
			{ className: "counts" },
			mentions > 0 ? el("span", { className: "mention-badge", textContent: mentions > 1 ? `@${mentions}` : "@", title: `${mentions} unread mention${mentions > 1 ? "s" : ""} of you`, ariaLabel: `${mentions} unread mention${mentions > 1 ? "s" : ""}` }) : null,
			conv.unread_count > 0 ? el("span", { className: "unread", textContent: String(conv.unread_count), ariaLabel: `${conv.unread_count} unread` }) : null,
		),
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
	if (state.current?.id !== conv.id) {
		closeThread();
		setReplyTo(null);
		state.pins = [];
		renderPins();
	}
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
	await rememberUsers(userIdsOf(page));
	addMessages(page.reverse());
	loadPins();
	await emit(state.chat, "conversation:mark-read", { conversationId: conv.id });
	// Reading the chat reads its notifications too.
	for (const n of state.notifications.filter(x => !x.is_read && x.related_id === conv.id)) {
		await emit(state.notif, "notification:read", { notificationId: n.id }).catch(() => undefined);
	}
	await loadConversations();
}

function closeChat() {
	if (state.current) emit(state.chat, "conversation:leave", { conversationId: state.current.id }).catch(() => undefined);
	closeThread();
	setReplyTo(null);
	state.pins = [];
	renderPins();
	state.current = null;
	$("chat").hidden = true;
	$("chat-empty").hidden = false;
	$("app-view").classList.remove("chat-open");
}
$("back").addEventListener("click", () => closeChat());

function renderChatHeader() {
	const conv = state.current;
	$("chat-title").textContent = titleOf(conv);
	$("chat-avatar").replaceChildren(...conversationAvatar(conv).childNodes);
	showChatPresence();
	const amAdmin = conv.admin_id === state.me.id;
	const amModerator = conv.moderator_ids.includes(state.me.id);
	$("chat-members").replaceChildren(
		...conv.participants.map(id => {
			const label = `${nameOf(id)}${conv.admin_id === id ? " (admin)" : conv.moderator_ids.includes(id) ? " (moderator)" : ""}`;
			// The admin manages everyone, moderators manage plain members (conversations.removeMember).
			const plain = conv.admin_id !== id && !conv.moderator_ids.includes(id);
			if (conv.type === "private" && id !== state.me.id) {
				const button = el("button", { className: "member", textContent: label, title: "Set a nickname" });
				button.prepend(presenceDot(id));
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
			if (conv.type !== "group" || id === state.me.id || !(amAdmin || (amModerator && plain))) {
				const span = el("span", { className: "member", textContent: label });
				if (id !== state.me.id) span.prepend(presenceDot(id));
				return span;
			}
			const button = el("button", { className: "member", textContent: label, title: "Manage this member" });
			button.prepend(presenceDot(id));
			button.addEventListener("click", () => manageMember(id));
			return button;
		}),
	);
	$("mute").textContent = conv.muted ? "Unmute" : "Mute";
	$("pin").textContent = conv.pinned ? "Unpin chat" : "Pin chat";
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

// ---------- presence: who is online, away, or when last seen ----------

const PRESENCE_WORDS = { online: "online", away: "away", offline: "offline" };

/** What this page knows of a user's presence: live entries first, else the profile it fetched. */
function presenceOf(userId) {
	const live = state.presence.get(userId);
	if (live) return live;
	const user = state.users.get(userId);
	return user?.status ? { status: user.status, last_seen_at: user.last_seen_at ?? null } : { status: "offline", last_seen_at: null };
}

const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
function relativeTime(iso) {
	const seconds = (Date.parse(iso) - Date.now()) / 1000;
	if (Number.isNaN(seconds)) return "";
	const ago = -seconds;
	if (ago < 60) return "just now";
	if (ago < 3600) return relativeFormat.format(Math.round(seconds / 60), "minute");
	if (ago < 86400) return relativeFormat.format(Math.round(seconds / 3600), "hour");
	if (ago < 7 * 86400) return relativeFormat.format(Math.round(seconds / 86400), "day");
	return `on ${new Date(iso).toLocaleDateString()}`;
}

function presenceText(userId) {
	const { status, last_seen_at } = presenceOf(userId);
	if (status !== "offline") return PRESENCE_WORDS[status] ?? status;
	return last_seen_at ? `last seen ${relativeTime(last_seen_at)}` : "offline";
}

function presenceDot(userId) {
	const dot = el("span", { className: "dot" });
	dot.dataset.presenceUser = String(userId);
	paintDot(dot);
	return dot;
}

function paintDot(dot) {
	const userId = Number(dot.dataset.presenceUser);
	const { status } = presenceOf(userId);
	dot.className = `dot ${status}`;
	dot.title = `${nameOf(userId)}: ${presenceText(userId)}`;
	dot.setAttribute("role", "img");
	dot.ariaLabel = PRESENCE_WORDS[status] ?? status;
}

function showPresenceOf(userId) {
	for (const dot of document.querySelectorAll(`.dot[data-presence-user="${userId}"]`)) paintDot(dot);
	if (state.current?.participants.includes(userId)) showChatPresence();
}

/** The chat header: the other person's presence, or how many members are online in a group. */
function showChatPresence() {
	const conv = state.current;
	const node = $("chat-presence");
	if (!conv) return (node.textContent = "");
	const other = partnerOf(conv);
	if (conv.type === "private") {
		node.textContent = other ? presenceText(other) : "";
		node.className = `presence ${presenceOf(other).status}`;
		return;
	}
	const online = conv.participants.filter(id => id !== state.me.id && presenceOf(id).status !== "offline").length;
	node.textContent = online > 0 ? `${online} other${online > 1 ? "s" : ""} online` : "";
	node.className = "presence online";
}
// "last seen 3 minutes ago" ages on screen.
setInterval(() => {
	if (!state.me) return;
	showChatPresence();
	for (const dot of document.querySelectorAll(".dot[data-presence-user]")) paintDot(dot);
}, 30_000);

/**
 * Subscribe to the people on screen: the private-chat partners of the list and the open group's
 * members (at most 200 per call), and let go of the ones no longer shown. One sync at a time.
 */
function syncPresence() {
	state.presenceSync = state.presenceSync.then(syncPresenceOnce).catch(() => undefined);
	return state.presenceSync;
}

async function syncPresenceOnce() {
	const chat = state.chat;
	if (!state.me || !chat?.connected) return;
	const wanted = new Set([...state.conversations, ...(state.requests ?? [])].map(partnerOf).filter(id => id != null));
	if (state.current?.type === "group") for (const id of state.current.participants) wanted.add(id);
	wanted.delete(state.me.id);
	const add = [...wanted].filter(id => !state.presenceSubs.has(id));
	const drop = [...state.presenceSubs].filter(id => !wanted.has(id));
	for (const id of add) state.presenceSubs.add(id);
	for (const id of drop) state.presenceSubs.delete(id);
	for (let i = 0; i < drop.length; i += 200) {
		emit(chat, "presence:unsubscribe", { userIds: drop.slice(i, i + 200) }).catch(() => undefined);
	}
	for (let i = 0; i < add.length; i += 200) {
		const userIds = add.slice(i, i + 200);
		try {
			for (const entry of await emit(chat, "presence:subscribe", { userIds })) {
				state.presence.set(entry.userId, { status: entry.status, last_seen_at: entry.last_seen_at });
				showPresenceOf(entry.userId);
			}
		} catch {
			// Not subscribed after all: the next sync (the next list refresh) tries again.
			if (chat === state.chat) for (const id of userIds) state.presenceSubs.delete(id);
		}
	}
}

/** Ask again for everyone shown (after a change of what this user may see): subscribing twice is harmless. */
function resubscribePresence() {
	state.presenceSubs.clear();
	state.presence.clear();
	syncPresence();
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
	await rememberUsers(userIdsOf(missed));
	addMessages(missed);
}

/** The page before the oldest seq shown; false when there is none. */
async function loadOlder() {
	if (state.loadingOlder || state.noOlder || !state.current || state.messages.length === 0) return false;
	state.loadingOlder = true;
	try {
		const older = await emit(state.chat, "message:list", { conversationId: state.current.id, before: state.messages[0].seq, limit: 30 });
		if (older.length === 0) state.noOlder = true;
		await rememberUsers(userIdsOf(older));
		const height = $("messages").scrollHeight;
		addMessages(older.reverse(), true);
		$("messages").scrollTop = $("messages").scrollHeight - height;
		return older.length > 0;
	} finally {
		state.loadingOlder = false;
	}
}

/** Scrolling to the top loads the page before the oldest seq shown. */
$("messages").addEventListener("scroll", () => {
	if ($("messages").scrollTop <= 40) loadOlder();
});

/** A message this page shows, in the chat or in the open thread. */
function findMessage(id) {
	if (state.thread?.root.id === id) return state.thread.root;
	return state.messages.find(m => m.id === id) ?? state.thread?.messages.find(m => m.id === id) ?? null;
}

/**
 * `me` of each reaction, for summaries sent to everyone alike: this user is among `user_ids`,
 * or (past the first 20 listed) it had reacted with that emoji before.
 */
function myReactions(reactions, known) {
	return reactions.map(r => ({ ...r, me: r.user_ids.includes(state.me.id) || (r.count > r.user_ids.length && !!known?.reactions?.find(x => x.emoji === r.emoji)?.me) }));
}

/** Who may pin here: either party of a private chat; in a group its admin and moderators. */
function canPin(conv = state.current) {
	if (!conv) return false;
	return conv.type === "private" || conv.admin_id === state.me.id || conv.moderator_ids.includes(state.me.id);
}

const EMOJI = ["👍", "❤️", "😂", "😮", "😢", "🙏", "🎉", "🔥"];

function systemText(m) {
	const data = m.system_data ?? {};
	const actor = nameOf(data.actorId ?? m.sender_id);
	return `${actor} ${m.content}${data.userId ? ` (${nameOf(data.userId)})` : ""}`;
}

/**
 * The text with `@name` of the people the message mentions marked (and `@all` when it reached
 * everyone); only names the server put in `mentions` are marked. Text only, never markup.
 */
function contentNode(m) {
	const node = el("div", { className: "content" });
	if (m.deleted) {
		node.textContent = "message deleted";
		return node;
	}
	const mentioned = new Map();
	for (const id of m.mentions ?? []) {
		const name = state.users.get(id)?.username;
		if (name) mentioned.set(name.toLowerCase(), id);
	}
	if (mentioned.size === 0) {
		node.textContent = m.content;
		return node;
	}
	// `@all` reached every member but the sender.
	const conv = state.current?.id === m.conversation_id ? state.current : null;
	const everyone = conv?.type === "group" && conv.participants.every(id => id === m.sender_id || m.mentions.includes(id));
	const text = m.content;
	let at = 0;
	for (const match of text.matchAll(/(^|[^A-Za-z0-9_.@-])@([A-Za-z0-9_.-]+)/g)) {
		let name = match[2];
		// "@bob." at the end of a sentence: the longest known name the token starts with.
		while (name && !mentioned.has(name.toLowerCase()) && !(everyone && name.toLowerCase() === "all")) name = name.slice(0, -1);
		if (!name) continue;
		const start = match.index + match[1].length;
		const id = mentioned.get(name.toLowerCase());
		const mine = id === state.me.id || (id === undefined && m.mentions.includes(state.me.id));
		node.append(text.slice(at, start), el("span", { className: `mention${mine ? " me" : ""}`, textContent: `@${name}`, title: mine ? "Mentions you" : `Mentions ${nameOf(id)}` }));
		at = start + name.length + 1;
	}
	node.append(text.slice(at));
	return node;
}

function reactionsNode(m) {
	const box = el("div", { className: "reactions" });
	box.setAttribute("role", "group");
	box.ariaLabel = "Reactions";
	for (const r of m.reactions ?? []) {
		const names = r.user_ids.map(nameOf);
		const more = r.count - r.user_ids.length;
		const who = `${names.join(", ")}${more > 0 ? ` and ${more} more` : ""}`;
		const chip = el("button", { type: "button", className: `reaction${r.me ? " me" : ""}`, textContent: `${r.emoji} ${r.count}`, title: `${who} reacted with ${r.emoji}` });
		chip.dataset.emoji = r.emoji;
		chip.setAttribute("aria-pressed", String(!!r.me));
		chip.ariaLabel = `${r.emoji} ${r.count}: ${who}${r.me ? " (press to take yours back)" : ""}`;
		chip.addEventListener("click", () => toggleReaction(m.id, r.emoji));
		box.append(chip);
	}
	return box;
}

async function toggleReaction(messageId, emoji) {
	const mine = findMessage(messageId)?.reactions?.find(r => r.emoji === emoji)?.me;
	try {
		updateMessage(await emit(state.chat, mine ? "message:unreact" : "message:react", { messageId, emoji }));
	} catch (err) {
		showError(mine ? "Taking back the reaction" : "Reacting", err);
	}
}

/** The common emoji, under the message, to react with (pressing one I used takes it back). */
function togglePicker(li, m, opener) {
	const open = li.querySelector(".picker");
	if (open) {
		open.remove();
		opener.setAttribute("aria-expanded", "false");
		return;
	}
	const picker = el("div", { className: "picker" });
	picker.setAttribute("role", "group");
	picker.ariaLabel = "Pick a reaction";
	for (const emoji of EMOJI) {
		const button = el("button", { type: "button", textContent: emoji, title: `React with ${emoji}` });
		button.addEventListener("click", () => {
			picker.remove();
			toggleReaction(m.id, emoji);
		});
		picker.append(button);
	}
	picker.addEventListener("keydown", e => {
		if (e.key !== "Escape") return;
		picker.remove();
		opener.setAttribute("aria-expanded", "false");
		opener.focus();
	});
	li.append(picker);
	opener.setAttribute("aria-expanded", "true");
	picker.querySelector("button").focus();
}

/** The quoted message above a reply: pressing it shows the original. */
function quoteNode(m) {
	const quoted = m.reply_to;
	const gone = quoted.excerpt == null;
	const button = el(
		"button",
		{ type: "button", className: `quote${gone ? " gone" : ""}`, title: "Show the original message" },
		el("strong", { textContent: nameOf(quoted.sender_id) }),
		el("span", { textContent: gone ? "deleted message" : quoted.excerpt || "[attachment]" }),
	);
	button.addEventListener("click", () => jumpTo(quoted.id, quoted.seq));
	return button;
}

/** Scroll the chat to a message, loading older pages (a few at most) to reach it. */
async function jumpTo(messageId, seq) {
	const nodeOf = () => $("messages").querySelector(`[data-id="${CSS.escape(messageId)}"]`);
	for (let pages = 0; !nodeOf() && pages < 10 && state.messages.length > 0 && state.messages[0].seq > seq; pages++) {
		if (!(await loadOlder())) break;
	}
	const node = nodeOf();
	if (!node) return showError("Showing that message", { message: "it is no longer in this chat's history", code: "NOT_FOUND" });
	node.scrollIntoView({ block: "center", behavior: "smooth" });
	node.classList.remove("flash");
	void node.offsetWidth; // restart the highlight
	node.classList.add("flash");
}

function actionButton(label, text, onClick, className) {
	const button = el("button", { type: "button", textContent: text, title: label, className });
	button.ariaLabel = label;
	button.addEventListener("click", onClick);
	return button;
}

/**
 * One message. `where`: "chat" (the conversation), "thread" (a reply in the thread panel) or
 * "root" (the message the thread answers, on top of the panel).
 */
function messageItem(m, where = "chat") {
	const mine = m.sender_id === state.me.id;
	const mentionsMe = !m.deleted && (m.mentions ?? []).includes(state.me.id);
	const li = el("li", { className: `message${mine ? " mine" : ""}${m.type === "system" ? " system" : ""}${m.deleted ? " deleted" : ""}${mentionsMe ? " mentions-me" : ""}${m.pinned_at ? " pinned" : ""}` });
	li.dataset.id = m.id;
	li.dataset.seq = String(m.seq);
	li.dataset.where = where;
	if (m.type === "system") {
		const pinned = m.system_data?.event === "message_pinned" ? m.system_data.messageId : null;
		if (!pinned) {
			li.textContent = systemText(m);
			return li;
		}
		// "mia pinned a message": pressing it shows that message.
		const show = el("button", { type: "button", className: "system-link", textContent: "pinned a message", title: "Show the pinned message" });
		show.addEventListener("click", () => jumpTo(pinned, findMessage(pinned)?.seq ?? state.pins.find(x => x.id === pinned)?.seq ?? 0));
		li.append(`${nameOf(m.system_data.actorId ?? m.sender_id)} `, show);
		return li;
	}
	if (m.reply_to && where === "chat") li.append(quoteNode(m));
	const head = el("div", { className: "meta" }, el("strong", { textContent: nameOf(m.sender_id) }), el("span", { textContent: new Date(m.created_at).toLocaleTimeString() }));
	if (m.pinned_at) head.append(el("span", { className: "pin-mark", textContent: "📌 pinned", title: m.pinned_by ? `Pinned by ${nameOf(m.pinned_by)}` : "Pinned" }));
	li.append(head, contentNode(m));
	for (const url of m.deleted ? [] : m.attachments) {
		li.append(m.type === "image" ? el("a", { href: url, target: "_blank" }, el("img", { src: url, alt: "attachment" })) : el("a", { href: url, textContent: "Download attachment", download: "" }));
	}
	if (!m.deleted && m.reactions?.length) li.append(reactionsNode(m));
	if (where === "chat" && m.reply_count > 0) {
		const link = el("button", { type: "button", className: "thread-link", textContent: `${m.reply_count} ${m.reply_count === 1 ? "reply" : "replies"}` });
		link.addEventListener("click", () => openThread(m));
		li.append(link);
	}
	const meta = el("div", { className: "meta" });
	if (m.edited_at && !m.deleted) meta.append(el("span", { textContent: "edited" }));
	if (mine && m.seen_by.length > 0) meta.append(el("span", { className: "seen", textContent: "✓ seen" }));
	else if (mine && m.delivered_to.length > 0) meta.append(el("span", { className: "delivered", textContent: "delivered" }));
	// Shown on hover or focus where there is a mouse, always on touch screens (style.css).
	const actions = el("span", { className: "msg-actions" });
	if (!m.deleted) {
		const react = actionButton("Add a reaction", "☺+", () => togglePicker(li, m, react), "react-button");
		react.setAttribute("aria-expanded", "false");
		actions.append(react);
		if (where === "chat") actions.append(actionButton("Reply", "Reply", () => setReplyTo(m), "reply-button"));
		if (where !== "thread" && canPin()) {
			actions.append(actionButton(m.pinned_at ? "Unpin the message" : "Pin the message", m.pinned_at ? "Unpin" : "Pin", () => setPinned(m, !m.pinned_at), "pin-button"));
		}
	}
	if (mine && !m.deleted) {
		const edit = el("button", { textContent: "Edit" });
		edit.addEventListener("click", async () => {
			const text = prompt("Edit message", m.content);
			if (text && text.trim()) updateMessage(await emit(state.chat, "message:edit", { messageId: m.id, content: text }));
		});
		const del = el("button", { textContent: "Delete" });
		del.addEventListener("click", () => emit(state.chat, "message:delete", { messageId: m.id }).catch(err => showError("Deleting the message", err)));
		actions.append(edit, del);
	}
	meta.append(actions);
	li.append(meta);
	return li;
}

function renderMessages() {
	if (!state.current) return;
	$("messages").replaceChildren(...state.messages.map(m => messageItem(m)));
	if (state.thread) renderThread();
}

function addMessages(list, prepend = false) {
	const known = new Set(state.messages.map(m => m.id));
	const fresh = list.filter(m => !known.has(m.id));
	if (fresh.length === 0) return;
	state.messages = prepend ? [...fresh, ...state.messages] : [...state.messages, ...fresh];
	state.messages.sort((a, b) => a.seq - b.seq);
	const box = $("messages");
	const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
	box.replaceChildren(...state.messages.map(m => messageItem(m)));
	if (!prepend && atBottom) box.scrollTop = box.scrollHeight;
}

/** A newer version of a message: wherever it is shown (chat, thread, pinned bar). */
function updateMessage(message) {
	const i = state.messages.findIndex(m => m.id === message.id);
	if (i >= 0) state.messages[i] = message;
	if (state.thread) {
		if (state.thread.root.id === message.id) state.thread.root = message;
		const j = state.thread.messages.findIndex(m => m.id === message.id);
		if (j >= 0) state.thread.messages[j] = message;
		if (state.thread.root.id === message.id) $("thread-count").textContent = repliesLabel(message.reply_count ?? 0);
	}
	for (const node of document.querySelectorAll(`.messages [data-id="${CSS.escape(message.id)}"]`)) node.replaceWith(messageItem(message, node.dataset.where));
	const p = state.pins.findIndex(m => m.id === message.id);
	if (p >= 0 && message.pinned_at) {
		state.pins[p] = message;
		renderPins();
	}
}

// ---------- replies and threads ----------

/** The message the composer answers (null: none), shown above the composer. */
function setReplyTo(m) {
	state.replyTo = m;
	$("reply-bar").hidden = !m;
	if (!m) return;
	$("reply-name").textContent = nameOf(m.sender_id);
	$("reply-excerpt").textContent = m.content ? m.content.slice(0, 100) : "[attachment]";
	$("text").focus();
}
$("reply-cancel").addEventListener("click", () => {
	setReplyTo(null);
	$("text").focus();
});

const repliesLabel = n => `${n} ${n === 1 ? "reply" : "replies"}`;

async function openThread(root) {
	state.thread = { root, messages: [], noOlder: false, loading: false };
	$("thread").hidden = false;
	$("app-view").classList.add("thread-open");
	renderThread();
	await loadThread(root);
	if (state.thread?.root.id === root.id) $("thread-text").focus();
}

/** The newest replies of the thread (50), or the page before the oldest shown. */
async function loadThread(root, older = false) {
	const thread = state.thread;
	if (!thread || thread.root.id !== root.id || thread.loading) return;
	thread.loading = true;
	try {
		const page = await emit(state.chat, "message:list", {
			conversationId: root.conversation_id,
			replyTo: root.id,
			limit: 50,
			...(older && thread.messages.length > 0 ? { before: thread.messages[0].seq } : {}),
		});
		if (state.thread !== thread) return;
		if (older && page.length === 0) thread.noOlder = true;
		await rememberUsers(userIdsOf(page));
		addThreadMessages(page);
	} catch (err) {
		showError("Loading the thread", err);
	} finally {
		thread.loading = false;
	}
}

function addThreadMessages(list) {
	const thread = state.thread;
	const known = new Set(thread.messages.map(m => m.id));
	thread.messages = [...thread.messages, ...list.filter(m => !known.has(m.id))].sort((a, b) => a.seq - b.seq);
	const box = $("thread-messages");
	const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
	renderThread();
	if (atBottom) box.scrollTop = box.scrollHeight;
}

function renderThread() {
	const { root, messages } = state.thread;
	$("thread-root").replaceChildren(messageItem(root, "root"));
	$("thread-count").textContent = repliesLabel(Math.max(root.reply_count ?? 0, messages.length));
	$("thread-messages").replaceChildren(...messages.map(m => messageItem(m, "thread")));
}

function closeThread() {
	state.thread = null;
	$("thread").hidden = true;
	$("app-view").classList.remove("thread-open");
	$("thread-root").replaceChildren();
	$("thread-messages").replaceChildren();
}
$("thread-close").addEventListener("click", () => {
	closeThread();
	$("text").focus();
});
$("thread-messages").addEventListener("scroll", () => {
	if ($("thread-messages").scrollTop <= 40 && state.thread && !state.thread.noOlder) loadThread(state.thread.root, true);
});

$("thread-composer").addEventListener("submit", async e => {
	e.preventDefault();
	const thread = state.thread;
	const content = $("thread-text").value.trim();
	if (!thread || !content) return;
	$("thread-text").value = "";
	try {
		const message = await emit(state.chat, "message:send", { conversationId: thread.root.conversation_id, content, attachments: [], clientId: crypto.randomUUID(), replyTo: thread.root.id });
		if (state.thread === thread) addThreadMessages([message]);
		if (state.current?.id === message.conversation_id) addMessages([message]);
	} catch (err) {
		$("thread-text").value = content;
		showError("Sending the reply", err);
	}
});

// ---------- pinned messages ----------

async function loadPins() {
	const conv = state.current;
	if (!conv) return;
	try {
		const pins = await emit(state.chat, "conversation:pins", { conversationId: conv.id });
		if (state.current?.id !== conv.id) return;
		await rememberUsers(userIdsOf(pins));
		state.pins = pins;
		state.pinIndex = 0;
	} catch {
		// Left or removed meanwhile, or offline: no bar rather than a stale one.
		if (state.current?.id === conv.id) state.pins = [];
	}
	renderPins();
}

/** The bar shows one pinned message (the latest first); pressing it shows that one and moves on. */
function renderPins() {
	const pins = state.pins;
	$("pinned-bar").hidden = pins.length === 0;
	if (pins.length === 0) {
		$("pins-list").hidden = true;
		$("pinned-all").setAttribute("aria-expanded", "false");
		return;
	}
	state.pinIndex %= pins.length;
	const shown = pins[state.pinIndex];
	$("pinned-label").textContent = pins.length > 1 ? `📌 Pinned ${state.pinIndex + 1}/${pins.length}` : "📌 Pinned";
	$("pinned-text").textContent = `${nameOf(shown.sender_id)}: ${shown.deleted ? "message deleted" : shown.content || "[attachment]"}`;
	$("pinned-all").hidden = pins.length < 2 && !canPin();
	if (!$("pins-list").hidden) renderPinsList();
}

function renderPinsList() {
	$("pins-list").replaceChildren(
		...state.pins.map(m => {
			const show = el("button", { type: "button", className: "pin-text", textContent: `${nameOf(m.sender_id)}: ${m.deleted ? "message deleted" : m.content || "[attachment]"}`, title: "Show this message" });
			show.addEventListener("click", () => {
				$("pins-list").hidden = true;
				$("pinned-all").setAttribute("aria-expanded", "false");
				jumpTo(m.id, m.seq);
			});
			const li = el("li", {}, show);
			li.dataset.id = m.id;
			if (canPin()) li.append(actionButton("Unpin the message", "Unpin", () => setPinned(m, false)));
			return li;
		}),
	);
}

$("pinned-current").addEventListener("click", () => {
	const shown = state.pins[state.pinIndex];
	if (!shown) return;
	jumpTo(shown.id, shown.seq);
	state.pinIndex = (state.pinIndex + 1) % state.pins.length;
	renderPins();
});
$("pinned-all").addEventListener("click", () => {
	const open = $("pins-list").hidden;
	$("pins-list").hidden = !open;
	$("pinned-all").setAttribute("aria-expanded", String(open));
	if (open) renderPinsList();
});

async function setPinned(m, pin) {
	try {
		updateMessage(await emit(state.chat, pin ? "message:pin" : "message:unpin", { messageId: m.id }));
	} catch (err) {
		return showError(pin ? "Pinning the message" : "Unpinning the message", err);
	}
	await loadPins();
}

// ---------- composer ----------

$("composer").addEventListener("submit", async e => {
	e.preventDefault();
	const content = $("text").value.trim();
	if (!state.current || (!content && !state.pendingAttachment)) return;
	const attachments = state.pendingAttachment ? [state.pendingAttachment.fileId] : [];
	const replyTo = state.replyTo?.id;
	// The clientId makes a retried send safe: the server keeps one message per clientId.
	const clientId = crypto.randomUUID();
	$("text").value = "";
	state.pendingAttachment = null;
	$("pending-attachment").textContent = "";
	setReplyTo(null);
	try {
		const message = await emit(state.chat, "message:send", { conversationId: state.current.id, content, attachments, clientId, ...(replyTo ? { replyTo } : {}) });
		addMessages([message]);
		if (state.thread && message.reply_to?.id === state.thread.root.id) addThreadMessages([message]);
	} catch (err) {
		showError("Sending the message", err);
	}
});

// ---------- @mentions: the conversation's members as you type ----------

/** Members whose username starts with `prefix` (and `all` for a group's admin and moderators). */
function mentionCandidates(prefix) {
	const conv = state.current;
	if (!conv) return [];
	const names = conv.participants
		.filter(id => id !== state.me.id)
		.map(id => state.users.get(id)?.username)
		.filter(Boolean);
	if (conv.type === "group" && (conv.admin_id === state.me.id || conv.moderator_ids.includes(state.me.id))) names.push("all");
	const lower = prefix.toLowerCase();
	return names
		.filter(name => name.toLowerCase().startsWith(lower))
		.sort((a, b) => a.localeCompare(b))
		.slice(0, 8);
}

/** `@` + letters in `input` opens the list; arrows move, Enter or Tab (or a click) picks, Escape closes. */
function mentionAutocomplete(input) {
	const list = $("mention-list");
	let names = [];
	let active = 0;
	let start = -1;
	const isOpen = () => !list.hidden && list.dataset.owner === input.id;
	const close = () => {
		if (list.dataset.owner === input.id) list.hidden = true;
		input.setAttribute("aria-expanded", "false");
		input.removeAttribute("aria-activedescendant");
	};
	const render = () => {
		list.replaceChildren(
			...names.map((name, i) => {
				const option = el("li", { id: `mention-option-${i}`, className: i === active ? "active" : "", textContent: `@${name}` });
				option.setAttribute("role", "option");
				option.setAttribute("aria-selected", String(i === active));
				// mousedown, not click: the input keeps its focus (and its caret).
				option.addEventListener("mousedown", e => {
					e.preventDefault();
					pick(name);
				});
				return option;
			}),
		);
		input.setAttribute("aria-activedescendant", `mention-option-${active}`);
	};
	const pick = name => {
		const caret = input.selectionStart ?? input.value.length;
		const inserted = `@${name} `;
		input.value = input.value.slice(0, start) + inserted + input.value.slice(caret);
		const at = start + inserted.length;
		input.setSelectionRange(at, at);
		close();
		input.focus();
	};
	input.addEventListener("input", () => {
		const caret = input.selectionStart ?? input.value.length;
		const match = /(?:^|\s)@([A-Za-z0-9_.-]{0,32})$/.exec(input.value.slice(0, caret));
		names = match ? mentionCandidates(match[1]) : [];
		if (names.length === 0) return close();
		start = caret - match[1].length - 1;
		active = 0;
		list.dataset.owner = input.id;
		input.form.prepend(list);
		render();
		list.hidden = false;
		input.setAttribute("aria-expanded", "true");
	});
	input.addEventListener("keydown", e => {
		if (!isOpen()) return;
		if (e.key === "ArrowDown" || e.key === "ArrowUp") {
			e.preventDefault();
			active = (active + (e.key === "ArrowDown" ? 1 : names.length - 1)) % names.length;
			render();
		} else if (e.key === "Enter" || e.key === "Tab") {
			// Not the form's submit: the pick goes into the text.
			e.preventDefault();
			pick(names[active]);
		} else if (e.key === "Escape") {
			e.preventDefault();
			close();
		}
	});
	input.addEventListener("blur", close);
}
mentionAutocomplete($("text"));
mentionAutocomplete($("thread-text"));

function sendTyping() {
	if (!state.current || Date.now() - state.lastTypingSent < 1500) return;
	state.lastTypingSent = Date.now();
	emit(state.chat, "typing", { conversationId: state.current.id, isTyping: true }).catch(() => undefined);
}
$("text").addEventListener("input", sendTyping);
$("thread-text").addEventListener("input", sendTyping);

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
			const text = n.type === "mention" ? `${n.sender_name ?? n.title} mentioned you${n.conversation_name ? ` in ${n.conversation_name}` : ""}: ${n.content}` : `${n.title}: ${n.content}`;
			const li = el("li", { className: `${n.is_read ? "" : "unread"}${n.type === "mention" ? " mention" : ""}` }, el("span", { textContent: text }), remove);
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
