/**
 * The web client in public/, served by the gateway, driven in a real (headless) Chromium by two
 * people: register, find each other, the message request, live messages both ways, read
 * receipts, an image attachment, the notification badge, and a reload that keeps the session.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import zlib from "node:zlib";
import { after, before, describe, it } from "node:test";
import { type Browser, type Page, chromium } from "playwright-core";
import { startBroker, tempDir, type RunningSystem } from "../helpers/system";

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

describe("web client in a real browser", { skip }, () => {
	let sys: RunningSystem;
	let browser: Browser;
	const pageErrors: string[] = [];

	before(async () => {
		process.env.DATA_DIR = tempDir();
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

	async function person(name: string, shootLogin = false): Promise<Page> {
		const page = await (await browser.newContext({ viewport: { width: 1200, height: 760 } })).newPage();
		page.on("pageerror", err => pageErrors.push(`${name}: ${err.message}`));
		await page.goto(`${sys.baseUrl}/`);
		await page.waitForSelector("#auth-view:not([hidden])");
		// What a newcomer sees first after npm start.
		if (shootLogin) await page.screenshot({ path: path.join(SCREENSHOT_DIR, "1-login.png") });
		await page.fill("#register-form [name=username]", name);
		await page.fill("#register-form [name=email]", `${name}@example.test`);
		await page.fill("#register-form [name=password]", "a long password");
		await page.click("#register-form button");
		await page.waitForSelector("#app-view:not([hidden])");
		await page.waitForSelector("#connection.online");
		return page;
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
		// Finn finds it by searching.
		await finn.waitForSelector("#conversations li[title=Trio]");
		await finn.fill("#message-search", "ZEBRA");
		await finn.press("#message-search", "Enter");
		await finn.waitForSelector("#message-results .found:text('zebra crossing at noon')");
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
	});
});
