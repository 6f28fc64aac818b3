/**
 * lib/chat.ts notificationTargetsOf with mentions, and unreadMentions: who a message notifies and
 * of what, and how many unread messages mention a member.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type ConversationDoc, type MembershipDoc, notificationTargetsOf, unreadCount, unreadMentions } from "../../lib/chat";

const group = { type: "group" as const, name: "team", status: "accepted" as const, participants: [1, 2, 3, 4, 5] };
const none = { blockedBy: [], muted: [] };
const byUser = (targets: ReturnType<typeof notificationTargetsOf>) => Object.fromEntries(targets.recipients.map(r => [r.userId, r.type]));

describe("notificationTargetsOf with mentions", () => {
	it("gives a mentioned member a mention instead of its message, once", () => {
		const t = notificationTargetsOf(group, 1, none, [3, 3]);
		assert.deepEqual(byUser(t), { 2: "message", 3: "mention", 4: "message", 5: "message" });
		assert.equal(t.recipients.length, 4, "one entry per user");
		assert.equal(t.conversationType, "group");
		assert.equal(t.conversationName, "team");
	});

	it("reaches a muted member only when mentioned", () => {
		const t = notificationTargetsOf(group, 1, { blockedBy: [], muted: [3, 4] }, [3]);
		assert.deepEqual(byUser(t), { 2: "message", 3: "mention", 5: "message" });
	});

	it("never reaches who blocked the sender, mentioned or not", () => {
		const t = notificationTargetsOf(group, 1, { blockedBy: [3, 4], muted: [4] }, [3, 4]);
		assert.deepEqual(byUser(t), { 2: "message", 5: "message" });
	});

	it("ignores the sender and anyone outside the conversation", () => {
		const t = notificationTargetsOf(group, 1, none, [1, 99, 1234]);
		assert.deepEqual(byUser(t), { 2: "message", 3: "message", 4: "message", 5: "message" });
		assert.ok(!t.recipients.some(r => r.userId === 99 || r.userId === 1234 || r.userId === 1));
	});

	it("keeps a message request a message request, even when it mentions (and not for a muted addressee)", () => {
		const pending = { type: "private" as const, name: null, status: "pending" as const, participants: [1, 2] };
		assert.deepEqual(byUser(notificationTargetsOf(pending, 1, none, [2])), { 2: "message_request" });
		assert.deepEqual(byUser(notificationTargetsOf(pending, 1, { blockedBy: [], muted: [2] }, [2])), {});
	});

	it("without mentions is what it was: messages to everyone not muted", () => {
		assert.deepEqual(byUser(notificationTargetsOf(group, 2, { blockedBy: [], muted: [5] })), { 1: "message", 3: "message", 4: "message" });
	});
});

describe("unreadMentions", () => {
	const conv = { last_seq: 10, sent_seq: { "7": 6 } } as unknown as ConversationDoc;
	const member = (over: Partial<MembershipDoc>) => ({ user_id: 3, last_read_seq: 0, cleared_seq: 0, ...over }) as MembershipDoc;

	it("counts the mentions above the read position, like the unread count", () => {
		assert.equal(unreadMentions(conv, member({ mention_seqs: [2, 5, 9] })), 3);
		assert.equal(unreadMentions(conv, member({ mention_seqs: [2, 5, 9], last_read_seq: 5 })), 1);
		assert.equal(unreadMentions(conv, member({ mention_seqs: [2, 5, 9], last_read_seq: 10 })), 0);
		assert.equal(unreadCount(conv, member({ last_read_seq: 10 })), 0);
	});

	it("resets with clearing the history, and with the member's own message", () => {
		assert.equal(unreadMentions(conv, member({ mention_seqs: [2, 5, 9], cleared_seq: 9 })), 0);
		assert.equal(unreadMentions(conv, member({ user_id: 7, mention_seqs: [2, 5, 9] })), 1, "its own message at 6 read up to there");
	});

	it("is 0 without a membership or mentions (a membership stored before mentions has no list)", () => {
		assert.equal(unreadMentions(conv, null), 0);
		assert.equal(unreadMentions(conv, member({})), 0);
		assert.equal(unreadMentions(conv, member({ mention_seqs: [] })), 0);
	});
});
