/**
 * The web client in public/, served by the gateway, driven in a real (headless) Chromium by two
 * people: register, find each other, the message request, live messages both ways, read
 * receipts, an image attachment, the notification badge, and a reload that keeps the session;
 * reactions, replies and threads, @mentions, pinned messages and presence between two pages.
 * Also its session: under the Content-Security-Policy with no violation, no failed request, the
 * refresh token only in its cookie, sockets that outlive many short access tokens, and a login
 * ended elsewhere ending the page's session.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import zlib from "node:zlib";
import { after, before, describe, it } from "node:test";
import { type Browser, type Page, chromium } from "playwright-core";
import { registerUser, startBroker, tempDir, type RunningSystem } from "../helpers/system";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const skip = fs.existsSync(CHROMIUM) ? false : `No Chromium at ${CHROMIUM}: browser test skipped (.ci/run installs Debian's chromium; set CHROMIUM_PATH otherwise)`;
/** Screenshots of the main screens land here (the README's come from SCREENSHOT_DIR=docs/screenshots). */
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR || path.join(os.tmpdir(), "parley-web-client");

/** A real PNG of one colour, big enough to see in a screenshot. */
function solidPng(width: number, height: number, rgb: [number, number, number]): Buffer {
	const chunk = (type: string, data: Buffer) => {
		const body = Buffer.concat([Buffer.from(type, "latin1"), data]);
		const out = Buffer.alloc(12 + data.length);
		out.writeUInt32BE(data.length, 0);
		body.copy(out, 4);
		out.writeUInt32BE(zlib.crc32(body), 8 + data.length);
		return out;
	};
	const header = Buffer.alloc(13);
	header.writeUInt32BE(width, 0);
	header.writeUInt32BE(height, 4);
	header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
	const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array.from({ length: width }, () => rgb).flat())]);
	const pixels = zlib.deflateSync(Buffer.concat(Array.from({ length: height }, () => row)));
	return Buffer.concat([Buffer.from("89504e470d0a1a0a", "hex"), chunk("IHDR", header), chunk("IDAT", pixels), chunk("IEND", Buffer.alloc(0))]);
}
const PNG = solidPng(160, 100, [47, 111, 237]);

/** Short-lived access tokens for the whole suite: every page must renew them as it goes. */
const TOKEN_TTL_SECONDS = 8;

/** What one page did on the network and in its console. */
interface PageLog {
	/** Requests that failed, or answered 400 or more. */
	failed: string[];
	/** POST /auth/refresh calls made. */
	refreshCalls: number;
	/** WebSocket connections opened. */
	websockets: number;
}

/** Reports every CSP violation to the console, where the test collects it with Chromium's own. */
const REPORT_CSP_VIOLATIONS = `document.addEventListener("securitypolicyviolation", e => console.error("CSP violation: " + e.violatedDirective + " " + e.blockedURI));`;

/** Records the connection indicator's every change, from now on, in window.connectionStates. */
const RECORD_CONNECTION_STATES = `(() => {
	window.connectionStates = [];
	const node = document.getElementById("connection");
	new MutationObserver(() => window.connectionStates.push(node.textContent)).observe(node, { childList: true, characterData: true, subtree: true });
})()`;

describe("web client in a real browser", { skip }, () => {
	let sys: RunningSystem;
	let browser: Browser;
	const pageErrors: string[] = [];
	const cspViolations: string[] = [];
	const logs = new Map<Page, PageLog>();
	const logOf = (page: Page) => logs.get(page) as PageLog;

	before(async () => {
		process.env.DATA_DIR = tempDir();
		process.env.ACCESS_TOKEN_TTL = String(TOKEN_TTL_SECONDS);
		process.env.JWT_SECRET = "web-client-secret-0123456789";
		process.env.BCRYPT_ROUNDS = "4";
		process.env.RATE_LIMIT = "0";
		process.env.RATE_LIMIT_AUTH = "0";
		delete process.env.DATABASE_URL;
		delete process.env.MONGO_URL;
		delete process.env.TRANSPORTER;
		sys = await startBroker(["api", "users", "conversations", "messages", "notifications", "files"]);
		// As the machine's probe runs it: no sandbox as root, and none of Chromium's own network chatter.
		browser = await chromium.launch({
			executablePath: CHROMIUM,
			args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
		});
		fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
	});

	after(async () => {
		await browser?.close();
		await sys?.stop();
	});

	/** A new browser (own cookies and storage) with one page, watched from its first request. */
	async function openPage(name: string): Promise<Page> {
		const context = await browser.newContext({ viewport: { width: 1200, height: 760 } });
		await context.addInitScript(REPORT_CSP_VIOLATIONS);
		const page = await context.newPage();
		const log: PageLog = { failed: [], refreshCalls: 0, websockets: 0 };
		logs.set(page, log);
		page.on("pageerror", err => pageErrors.push(`${name}: ${err.message}`));
		page.on("console", msg => {
			if (/Content Security Policy|CSP violation/i.test(msg.text())) cspViolations.push(`${name}: ${msg.text()}`);
		});
		page.on("requestfailed", req => log.failed.push(`${name}: ${req.method()} ${req.url()} ${req.failure()?.errorText}`));
		page.on("response", res => {
			if (res.status() >= 400) log.failed.push(`${name}: ${res.status()} ${res.request().method()} ${res.url()}`);
		});
		page.on("request", req => {
			if (new URL(req.url()).pathname === "/auth/refresh") log.refreshCalls++;
		});
		page.on("websocket", () => log.websockets++);
		return page;
	}

	async function person(name: string, shootLogin = false): Promise<Page> {
		const page = await openPage(name);
		await page.goto(`${sys.baseUrl}/`);
		await page.waitForSelector("#auth-view:not([hidden])");
		// What a newcomer sees first after npm start.
		if (shootLogin) await page.screenshot({ path: path.join(SCREENSHOT_DIR, "1-login.png") });
		await page.fill("#register-form [name=username]", name);
		await page.fill("#register-form [name=email]", `${name}@example.test`);
		await page.fill("#register-form [name=password]", "a long password");
		const [registered] = await Promise.all([page.waitForResponse(res => new URL(res.url()).pathname === "/auth/register"), page.click("#register-form button")]);
		// The refresh token travels only in the HttpOnly cookie, out of the page's reach.
		assert.equal(registered.request().headers()["x-refresh-transport"], "cookie");
		const body = await registered.json();
		assert.equal(typeof body.accessToken, "string");
		assert.equal("refreshToken" in body, false, "no refresh token in the body the page sees");
		await page.waitForSelector("#app-view:not([hidden])");
		await page.waitForSelector("#connection.online");
		return page;
	}

	/** The page's refresh cookie, as another device holding it would send it. */
	async function refreshCookieOf(page: Page): Promise<string> {
		const cookie = (await page.context().cookies(`${sys.baseUrl}/auth/refresh`)).find(c => c.name === "refreshToken");
		assert.ok(cookie, "a refresh cookie");
		assert.equal(cookie.httpOnly, true);
		return `refreshToken=${cookie.value}`;
	}

	/** Two people in an accepted private chat, each with it open. */
	async function chatting(a: string, b: string): Promise<[Page, Page]> {
		const first = await person(a);
		const second = await person(b);
		await first.fill("#search", b);
		await first.click(`#search-results li[data-username=${b}] button`);
		await first.waitForSelector(`#chat-title:text-is('${b}')`);
		await first.fill("#text", `Hello ${b}`);
		await first.press("#text", "Enter");
		await second.waitForSelector("#requests li .accept");
		await second.click("#requests li .accept");
		await second.waitForSelector(`#messages .message .content:text-is('Hello ${b}')`);
		return [first, second];
	}

	async function say(page: Page, text: string) {
		await page.fill("#text", text);
		await page.press("#text", "Enter");
		await page.waitForSelector(`#messages .message.mine .content:text-is('${text}')`);
	}

	it("two people chat end to end through the page", async () => {
		const alice = await person("alice", true);
		const bob = await person("bob");
		assert.equal(await alice.textContent("#me"), "alice");

		// Alice finds Bob and writes: a message request.
		await alice.fill("#search", "bo");
		await alice.click("#search-results li[data-username=bob] button");
		await alice.waitForSelector("#chat:not([hidden])");
		assert.equal(await alice.textContent("#chat-title"), "bob");
		await alice.fill("#text", "Hello Bob!");
		await alice.press("#text", "Enter");
		await alice.waitForSelector("#messages .message.mine .content:text-is('Hello Bob!')");

		// Bob gets the request and the notification badge; he accepts and replies.
		await bob.waitForSelector("#requests li .accept");
		await bob.waitForSelector("#badge:not([hidden])");
		assert.equal(await bob.textContent("#badge"), "1");
		await bob.click("#requests li .accept");
		await bob.waitForSelector("#messages .message .content:text-is('Hello Bob!')");
		await bob.fill("#text", "Hi Alice, welcome");
		await bob.press("#text", "Enter");

		// Alice sees the reply live, and that Bob read her message.
		await alice.waitForSelector("#messages .message:not(.mine) .content:text-is('Hi Alice, welcome')");
		await alice.waitForSelector("#messages .message.mine .seen");

		// An image attachment: uploaded, sent, previewed on the other side, served with its type.
		await alice.setInputFiles("#file", { name: "dot.png", mimeType: "image/png", buffer: PNG });
		await alice.waitForSelector("#pending-attachment:text('Attached: dot.png')");
		await alice.fill("#text", "a picture");
		await alice.press("#text", "Enter");
		const img = await bob.waitForSelector("#messages .message img");
		const src = await img.getAttribute("src");
		assert.match(src ?? "", /^\/files\/[a-f0-9]{32}$/);
		const served = await fetch(`${sys.baseUrl}${src}`);
		assert.equal(served.headers.get("content-type"), "image/png");

		// Bob's notifications list has Alice's messages.
		await bob.click("#bell");
		await bob.waitForSelector("#notification-list li");
		assert.match((await bob.textContent("#notification-list")) ?? "", /Hello Bob!|a picture/);

		// A reload keeps the session (refresh-token cookie) and the history.
		await alice.reload();
		await alice.waitForSelector("#app-view:not([hidden])");
		await alice.click("#conversations li");
		await alice.waitForSelector("#messages .message .content:text-is('Hi Alice, welcome')");
		const seqs = await alice.$$eval("#messages .message", nodes => nodes.map(n => Number(n.getAttribute("data-seq"))));
		assert.deepEqual(seqs, [1, 2, 3], "the whole history, in order");

		// (Bob's notification list is still open from above.)
		await bob.screenshot({ path: path.join(SCREENSHOT_DIR, "2-chat-desktop.png") });
		await bob.click("#bell");
		// A phone-sized window: one pane at a time.
		await bob.setViewportSize({ width: 390, height: 760 });
		await bob.screenshot({ path: path.join(SCREENSHOT_DIR, "3-chat-phone.png") });
		await bob.click("#back");
		await bob.waitForSelector("#conversations li");
		assert.equal(await bob.isVisible("#messages"), false, "on a phone the list replaces the chat");
		await bob.screenshot({ path: path.join(SCREENSHOT_DIR, "4-list-phone.png") });
		assert.deepEqual(pageErrors, [], "no script errors in the page");

		// Logging out ends the session for good.
		await alice.click("#logout");
		await alice.waitForSelector("#auth-view:not([hidden])");
		await alice.reload();
		await alice.waitForSelector("#auth-view:not([hidden])");
		assert.deepEqual(cspViolations, [], "no Content-Security-Policy violation");
	});

	it("a group with roles, message search and blocking through the page", async () => {
		const dana = await person("dana");
		const eve = await person("eve");
		const finn = await person("finn");
		// Dana picks Eve and Finn and makes a group.
		for (const name of ["eve", "finn"]) {
			await dana.fill("#search", name);
			await dana.check(`#search-results li[data-username=${name}] input[type=checkbox]`);
		}
		await dana.fill("#group-name", "Trio");
		await dana.click("#create-group");
		await dana.waitForSelector("#chat-title:text-is('Trio')");
		await eve.waitForSelector("#conversations li[title=Trio]");
		// The admin makes Eve a moderator (the page asks what to do with the member).
		dana.once("dialog", dialog => void dialog.accept("promote"));
		await dana.click("#chat-members button:text('eve')");
		await dana.waitForSelector("#chat-members :text('eve (moderator)')");
		await eve.click("#conversations li[title=Trio]");
		await eve.waitForSelector("#chat-members :text('dana (admin)')");
		await eve.waitForSelector("#add-member:not([hidden])");
		await eve.fill("#text", "zebra crossing at noon");
		await eve.press("#text", "Enter");
		// A moderator may pin; the admin may call @all, and is offered it.
		await eve.waitForSelector("#messages .message.mine .pin-button");
		await dana.click("#text");
		await dana.keyboard.type("@");
		await dana.waitForSelector("#mention-list:not([hidden])");
		assert.deepEqual(await dana.$$eval("#mention-list li", nodes => nodes.map(n => n.textContent)), ["@all", "@eve", "@finn"]);
		await dana.keyboard.press("Escape");
		assert.equal(await dana.isVisible("#mention-list"), false);
		await dana.fill("#text", "");
		// Finn finds it by searching.
		await finn.waitForSelector("#conversations li[title=Trio]");
		await finn.fill("#message-search", "ZEBRA");
		await finn.press("#message-search", "Enter");
		await finn.click("#message-results .found:text('zebra crossing at noon')");
		await finn.waitForSelector("#chat-title:text-is('Trio')");
		// A plain member reacts but does not pin, and sees who of the group is online.
		await finn.waitForSelector("#messages .message .react-button");
		assert.equal(await finn.locator("#messages .pin-button").count(), 0, "no Pin for a plain member");
		await finn.waitForSelector("#chat-members .dot.online >> nth=1");
		assert.equal(await finn.textContent("#chat-presence"), "2 others online");
		// Blocking in a private chat: the page says what failed and what to do.
		await finn.fill("#search", "dana");
		await finn.click("#search-results li[data-username=dana] button:text('Chat')");
		await finn.waitForSelector("#chat-title:text-is('dana')");
		finn.once("dialog", dialog => void dialog.accept());
		await finn.click("#block");
		await finn.waitForSelector("#block:text-is('Unblock')");
		await finn.fill("#text", "can you read this?");
		await finn.press("#text", "Enter");
		await finn.waitForSelector("#banner:not([hidden])");
		assert.match((await finn.textContent("#banner-text")) ?? "", /Sending the message failed: .*not allowed/);
		assert.deepEqual(pageErrors, [], "no script errors in the page");
		assert.deepEqual(cspViolations, [], "no Content-Security-Policy violation");
	});

	it("loads without a failed request or a refresh call, and is served under the security headers", async () => {
		const gina = await registerUser(sys.baseUrl, "gina");
		const page = await openPage("gina");
		const log = logOf(page);

		// A first visit: nobody is logged in, so nothing is asked that could fail.
		const doc = await page.goto(`${sys.baseUrl}/`);
		await page.waitForSelector("#auth-view:not([hidden])");
		await page.waitForLoadState("networkidle");
		assert.deepEqual(log.failed, [], "no failed request on a fresh visit");
		assert.equal(log.refreshCalls, 0, "no /auth/refresh without a session");

		// The page, its script and its style sheet: the CSP, no sniffing, no referrer, revalidated.
		const served = [{ path: "/", headers: doc?.headers() ?? {} }];
		for (const file of ["/app.js", "/style.css"]) {
			const res = await fetch(`${sys.baseUrl}${file}`);
			served.push({ path: file, headers: Object.fromEntries(res.headers) });
		}
		for (const { path: file, headers } of served) {
			const csp = headers["content-security-policy"] ?? "";
			assert.match(csp, /frame-ancestors 'none'/, `${file}: CSP ${csp}`);
			assert.match(csp, /script-src 'self'(;|$)/, `${file}: scripts only from the origin`);
			assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, file);
			assert.equal(headers["x-content-type-options"], "nosniff", file);
			assert.equal(headers["referrer-policy"], "no-referrer", file);
			assert.match(headers["cache-control"] ?? "", /no-cache/, `${file}: revalidated on every load`);
		}
		const icon = await fetch(`${sys.baseUrl}/favicon.svg`);
		assert.equal(icon.status, 200);
		assert.match(icon.headers.get("content-type") ?? "", /^image\/svg\+xml/);

		// Logging in: the answer the page gets has no refresh token, only the cookie has it.
		await page.fill("#login-form [name=login]", gina.username);
		await page.fill("#login-form [name=password]", gina.password);
		const [login] = await Promise.all([page.waitForResponse(res => new URL(res.url()).pathname === "/auth/login"), page.click("#login-form button")]);
		assert.equal(login.status(), 200);
		assert.equal(login.request().headers()["x-refresh-transport"], "cookie");
		const body = await login.json();
		assert.equal(typeof body.accessToken, "string");
		assert.equal("refreshToken" in body, false, "no refresh token in the login body");
		await refreshCookieOf(page);
		await page.waitForSelector("#connection.online");

		// A reload restores the session from the cookie, again with nothing failing.
		const [refreshed] = await Promise.all([page.waitForResponse(res => new URL(res.url()).pathname === "/auth/refresh"), page.reload()]);
		assert.equal(refreshed.status(), 200);
		assert.equal(refreshed.request().headers()["x-refresh-transport"], "cookie");
		assert.equal("refreshToken" in (await refreshed.json()), false, "no refresh token in the refresh body");
		await page.waitForSelector("#app-view:not([hidden])");
		await page.waitForSelector("#connection.online");
		await page.waitForLoadState("networkidle");
		assert.equal(await page.textContent("#me"), gina.username);
		assert.deepEqual(log.failed, [], "no failed request on a reload either");
		assert.deepEqual(cspViolations, [], "no Content-Security-Policy violation");
		assert.deepEqual(pageErrors, [], "no script errors in the page");
	});

	it("a logout on another device ends the page's session within seconds, and only that login's", async () => {
		const page = await person("joan");
		const log = logOf(page);
		// The same person also logged in on a second device: a login of its own.
		const other = await openPage("joan-2");
		await other.goto(`${sys.baseUrl}/`);
		await other.fill("#login-form [name=login]", "joan");
		await other.fill("#login-form [name=password]", "a long password");
		await other.click("#login-form button");
		await other.waitForSelector("#connection.online");

		// The same login ended from elsewhere (the cookie is what another device would hold).
		const res = await fetch(`${sys.baseUrl}/auth/logout`, { method: "POST", headers: { cookie: await refreshCookieOf(page) } });
		assert.equal(res.status, 204);
		await page.waitForSelector("#auth-view:not([hidden])", { timeout: 5_000 });
		assert.equal(await page.textContent("#auth-error"), "Your session ended, log in again.");
		assert.equal(await page.isVisible("#app-view"), false);
		// The second device's login goes on (its sockets may be ended too, and come back).
		await other.waitForTimeout(1_000);
		await other.waitForSelector("#connection.online", { timeout: 5_000 });
		assert.equal(await other.isVisible("#app-view"), true);
		assert.deepEqual(logOf(other).failed, []);
		// A call or a renewal that raced the logout may have been refused (401); nothing else may fail.
		assert.deepEqual(
			log.failed.filter(f => !/^\w+: 401 /.test(f)),
			[],
			"nothing but a refused call failed",
		);
		// Nothing is left to restore: a reload asks for no refresh.
		const before = { refreshes: log.refreshCalls, failed: log.failed.length };
		await page.reload();
		await page.waitForSelector("#auth-view:not([hidden])");
		await page.waitForLoadState("networkidle");
		assert.equal(log.refreshCalls, before.refreshes, "no /auth/refresh once the session is over");
		assert.deepEqual(log.failed.slice(before.failed), [], "no failed request after the session ended");
		assert.deepEqual(cspViolations, [], "no Content-Security-Policy violation");
	});

	it("reactions, replies and threads, @mentions, pinned messages and presence between two pages", async () => {
		const [mia, noah] = await chatting("mia", "noah");
		const messageOf = (text: string) => `#messages .message:has(> .content:text-is('${text}'))`;

		// Presence: each sees the other online, on the list's avatar and in the chat header.
		for (const page of [mia, noah]) {
			await page.waitForSelector("#chat-avatar .dot.online");
			await page.waitForSelector("#conversations li .dot.online");
			assert.equal(await page.textContent("#chat-presence"), "online");
		}

		// Reactions: Noah picks 👍 under Mia's message, Mia sees the count and adds hers.
		const hello = messageOf("Hello noah");
		await noah.hover(hello);
		await noah.click(`${hello} .react-button`);
		await noah.click(`${hello} .picker button:text-is('👍')`);
		await noah.waitForSelector(`${hello} .reaction.me[data-emoji='👍']:text-is('👍 1')`);
		const chip = await mia.waitForSelector(`${hello} .reaction[data-emoji='👍']:text-is('👍 1')`);
		assert.equal(await chip.getAttribute("aria-pressed"), "false", "not Mia's own reaction");
		assert.match((await chip.getAttribute("title")) ?? "", /noah reacted with 👍/);
		await chip.click();
		await mia.waitForSelector(`${hello} .reaction.me[data-emoji='👍']:text-is('👍 2')`);
		await noah.waitForSelector(`${hello} .reaction.me[data-emoji='👍']:text-is('👍 2')`);

		// A reply: the quote above the composer, then on the message, on both pages.
		await say(noah, "Lunch at noon?");
		const lunch = messageOf("Lunch at noon?");
		await mia.hover(lunch);
		await mia.click(`${lunch} .reply-button`);
		assert.equal(await mia.textContent("#reply-excerpt"), "Lunch at noon?");
		await say(mia, "Yes, see you there");
		assert.equal(await mia.isVisible("#reply-bar"), false, "the reply bar goes once the reply is sent");
		const answer = messageOf("Yes, see you there");
		await noah.waitForSelector(`${answer} .quote:has-text('Lunch at noon?')`);
		// The original counts its replies (message:updated) and opens its thread.
		await noah.click(`${lunch} .thread-link:text-is('1 reply')`);
		await noah.waitForSelector("#thread:not([hidden]) #thread-root .message .content:text-is('Lunch at noon?')");
		await noah.waitForSelector("#thread-messages .message .content:text-is('Yes, see you there')");
		await noah.fill("#thread-text", "Great, the usual place");
		await noah.press("#thread-text", "Enter");
		await noah.waitForSelector("#thread-messages .message.mine .content:text-is('Great, the usual place')");
		await mia.waitForSelector(`${lunch} .thread-link:text-is('2 replies')`);
		await noah.screenshot({ path: path.join(SCREENSHOT_DIR, "7-thread.png") });
		// On a phone the thread takes the whole screen, its close button leads back to the chat.
		await noah.setViewportSize({ width: 390, height: 760 });
		assert.equal(await noah.isVisible("#messages"), false);
		assert.equal(await noah.isVisible("#thread-text"), true);
		await noah.screenshot({ path: path.join(os.tmpdir(), "parley-thread-phone.png") });
		await noah.click("#thread-close");
		assert.equal(await noah.isVisible("#messages"), true);
		await noah.setViewportSize({ width: 1200, height: 760 });

		// A pin: either party of a private chat; the bar appears on both pages.
		await mia.hover(lunch);
		await mia.click(`${lunch} .pin-button`);
		for (const page of [mia, noah]) {
			await page.waitForSelector("#pinned-bar:not([hidden]) #pinned-text:has-text('Lunch at noon?')");
			await page.waitForSelector("#messages .message.system:has-text('pinned a message')");
		}

		// An @mention: Noah is away from the chat (a reload opens none); Mia picks him from the list.
		await noah.reload();
		await noah.waitForSelector("#connection.online");
		await mia.click("#text");
		await mia.keyboard.type("@no");
		await mia.waitForSelector("#mention-list:not([hidden]) li.active:text-is('@noah')");
		await mia.keyboard.press("Enter");
		assert.equal(await mia.inputValue("#text"), "@noah ", "the pick goes into the text, the form is not sent");
		await mia.keyboard.type("bring the umbrella");
		await mia.keyboard.press("Enter");
		// (Its text is in several nodes now: the mention is marked.)
		const umbrella = "#messages .message:has(> .content:has-text('bring the umbrella'))";
		await mia.waitForSelector(`${umbrella} .mention:not(.me):text-is('@noah')`);
		// Noah's list shows the mention badge, his notifications the mention.
		await noah.waitForSelector("#conversations li .mention-badge:text-is('@')");
		await noah.click("#bell");
		await noah.waitForSelector("#notification-list li.mention:has-text('mia mentioned you')");
		await noah.click("#bell");
		await noah.click("#conversations li[title=mia]");
		await noah.waitForSelector(`${umbrella} .mention.me:text-is('@noah')`);
		await noah.waitForSelector("#conversations li .mention-badge", { state: "detached" });
		await noah.screenshot({ path: path.join(SCREENSHOT_DIR, "5-reactions-replies.png") });

		// Presence: Noah closes his page, Mia sees him go offline, "last seen" just now.
		await noah.context().close();
		await mia.waitForSelector("#chat-avatar .dot.offline", { timeout: 5_000 });
		assert.match((await mia.textContent("#chat-presence")) ?? "", /^last seen (just now|now|\d+ seconds? ago)$/);
		await mia.click("#pinned-all");
		await mia.waitForSelector("#pins-list:not([hidden]) li:has-text('Lunch at noon?')");
		await mia.screenshot({ path: path.join(SCREENSHOT_DIR, "6-pins-presence.png") });
		await mia.click("#pinned-all");
		// Hiding her own last seen hides his from her too.
		await mia.click("#settings-button");
		assert.equal(await mia.isChecked("#show-last-seen"), true);
		const [patched] = await Promise.all([mia.waitForResponse(res => new URL(res.url()).pathname === "/users/me" && res.request().method() === "PATCH"), mia.uncheck("#show-last-seen")]);
		assert.equal(patched.status(), 200);
		await mia.waitForSelector("#chat-presence:text-is('offline')");
		await mia.click("#settings-close");
		// He comes back: online again on her page.
		const back = await openPage("noah-2");
		await back.goto(`${sys.baseUrl}/`);
		await back.fill("#login-form [name=login]", "noah");
		await back.fill("#login-form [name=password]", "a long password");
		await back.click("#login-form button");
		await back.waitForSelector("#connection.online");
		await mia.waitForSelector("#chat-avatar .dot.online", { timeout: 5_000 });
		assert.equal(await mia.textContent("#chat-presence"), "online");
		assert.deepEqual(logOf(mia).failed, []);
		assert.deepEqual(pageErrors, [], "no script errors in the page");
		assert.deepEqual(cspViolations, [], "no Content-Security-Policy violation");
	});

	it("stays connected across many access token lifetimes, and through a password change", async () => {
		const [kim, lou] = await chatting("kim", "lou");
		for (const page of [kim, lou]) await page.evaluate(RECORD_CONNECTION_STATES);
		const sockets = logOf(kim).websockets;
		const refreshes = logOf(kim).refreshCalls;

		// Both pages stay open for about four token lifetimes, doing nothing.
		await kim.waitForTimeout(4 * TOKEN_TTL_SECONDS * 1000);
		await say(lou, "still there?");
		await kim.waitForSelector("#messages .message:not(.mine) .content:text-is('still there?')", { timeout: 5_000 });
		for (const page of [kim, lou]) {
			assert.deepEqual(await page.evaluate("window.connectionStates"), [], "the indicator never left online");
		}
		assert.equal(logOf(kim).websockets, sockets, "the same connection all along");
		assert.ok(logOf(kim).refreshCalls - refreshes >= 3, `renewed the token before each expiry (${logOf(kim).refreshCalls - refreshes} refreshes)`);
		assert.equal(await kim.textContent("#connection"), "online");

		// A password change ends every login of the account: the page logs in again by itself.
		await kim.click("#password-button");
		await kim.fill("#password-form [name=oldPassword]", "a long password");
		await kim.fill("#password-form [name=newPassword]", "a new long password");
		await kim.click("#password-form button[type=submit]");
		await kim.waitForSelector("#password-form", { state: "hidden" });
		await kim.waitForSelector("#connection.online");
		await say(lou, "after the change");
		await kim.waitForSelector("#messages .message:not(.mine) .content:text-is('after the change')", { timeout: 5_000 });
		assert.equal(await kim.isVisible("#app-view"), true);
		const old = await fetch(`${sys.baseUrl}/auth/login`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ username: "kim", password: "a long password" }) });
		assert.equal(old.status, 400, "the old password no longer works");
		// And the new login is the one a reload restores.
		await kim.reload();
		await kim.waitForSelector("#connection.online");
		assert.equal(await kim.textContent("#me"), "kim");
		assert.deepEqual(logOf(kim).failed, []);
		assert.deepEqual(logOf(lou).failed, []);
		assert.deepEqual(cspViolations, [], "no Content-Security-Policy violation");
		assert.deepEqual(pageErrors, [], "no script errors in the page");
	});
});
