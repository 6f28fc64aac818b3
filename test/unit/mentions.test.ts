import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { mayMention, parseMentions } from "../../lib/mentions";

const members = [
	{ id: 1, username: "alice" },
	{ id: 2, username: "Bob" },
	{ id: 3, username: "carol.k" },
	{ id: 4, username: "dave-" },
	{ id: 5, username: "eve_1" },
];
const inGroup = (senderId: number, mayMentionAll = false) => ({ senderId, members, isGroup: true, mayMentionAll });
const inPrivate = (senderId: number) => ({ senderId, members: members.slice(0, 2), isGroup: false, mayMentionAll: false });

describe("parseMentions", () => {
	it("finds members by @username, case-insensitively, once each, in order", () => {
		assert.deepEqual(parseMentions("hi @bob and @ALICE, again @Bob", inGroup(5)), [2, 1]);
		assert.deepEqual(parseMentions("@eve_1: look", inGroup(1)), [5]);
	});

	it("never mentions the sender, a stranger or a former member", () => {
		assert.deepEqual(parseMentions("@alice @mallory @bob", inGroup(1)), [2]);
		assert.deepEqual(parseMentions("@carol.k", inPrivate(1)), []);
	});

	it("does not read an email address or a glued word as a mention", () => {
		assert.deepEqual(parseMentions("write to bob@example.com or x@@alice", inGroup(1)), []);
		assert.deepEqual(parseMentions("(@bob) [@alice]", inGroup(3)), [2, 1]);
	});

	it("treats trailing dots and dashes as punctuation unless they are in the name", () => {
		assert.deepEqual(parseMentions("thanks @bob.", inGroup(1)), [2]);
		assert.deepEqual(parseMentions("ask @carol.k.", inGroup(1)), [3]);
		assert.deepEqual(parseMentions("and @dave- too", inGroup(1)), [4]);
		assert.deepEqual(parseMentions("and @dave too", inGroup(1)), []);
	});

	it("@all in a group: everyone but the sender from its admin or a moderator, nobody from others", () => {
		assert.deepEqual(parseMentions("@all meeting now", inGroup(1, true)), [2, 3, 4, 5]);
		assert.deepEqual(parseMentions("@ALL.", inGroup(2, true)), [1, 3, 4, 5]);
		assert.deepEqual(parseMentions("@all meeting now", inGroup(1, false)), []);
		assert.deepEqual(parseMentions("@all and @bob", inGroup(1, false)), [2]);
	});

	it("@all in a private chat is just a name", () => {
		assert.deepEqual(parseMentions("@all", inPrivate(1)), []);
		assert.deepEqual(parseMentions("@all", { senderId: 1, members: [{ id: 1, username: "x1" }, { id: 9, username: "all" }], isGroup: false, mayMentionAll: false }), [9]);
	});

	it("costs nothing without an @", () => {
		assert.equal(mayMention("plain text"), false);
		assert.equal(mayMention("a@b"), true);
		assert.deepEqual(parseMentions("plain text", inGroup(1, true)), []);
	});

	it("ignores members whose name is unknown (the users service was away)", () => {
		assert.deepEqual(parseMentions("@ hello @", { senderId: 1, members: [{ id: 2, username: "" }], isGroup: true, mayMentionAll: false }), []);
	});
});
