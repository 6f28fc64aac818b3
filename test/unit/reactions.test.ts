import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { forViewer, isShown, normalizeEmoji, pastTheLimit, type ReactionRow, summarize } from "../../lib/reactions";

const code = (fn: () => unknown) => {
	try {
		fn();
	} catch (err) {
		return (err as { type?: string }).type;
	}
	return "ok";
};

let n = 0;
const row = (userId: number, emoji: string, at: number): ReactionRow => ({
	_id: String(++n).padStart(6, "0"),
	message_id: "m1",
	conversation_id: "c1",
	user_id: userId,
	emoji,
	reaction_key: `m1:${userId}:${emoji}`,
	created_at: new Date(1_700_000_000_000 + at),
});

describe("normalizeEmoji", () => {
	it("takes Unicode emoji, sequences included", () => {
		for (const e of ["👍", "❤️", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "1️⃣", "©️", "🏳️‍🌈"]) assert.equal(normalizeEmoji(e), e, e);
	});

	it("takes :shortcodes:, lowered", () => {
		assert.equal(normalizeEmoji(":thumbsup:"), ":thumbsup:");
		assert.equal(normalizeEmoji(":+1:"), ":+1:");
		assert.equal(normalizeEmoji(":Party_Parrot:"), ":party_parrot:");
	});

	it("refuses text, whitespace, control characters, empty and over-long values", () => {
		for (const bad of ["", "abc", "123", "#", " 👍", "👍 ", "👍\n", "\u0000", ":a b:", "::", ":thumbs up:", "thumbsup:", `:${"a".repeat(31)}:`, "👍".repeat(33), 12, null, {}]) {
			assert.equal(code(() => normalizeEmoji(bad)), "VALIDATION_ERROR", JSON.stringify(bad));
		}
		// 32 characters are fine, 33 are not, whatever their UTF-16 length.
		assert.equal(normalizeEmoji("👍".repeat(32)), "👍".repeat(32));
		assert.equal(normalizeEmoji(`:${"a".repeat(30)}:`).length, 32);
	});
});

describe("reaction summaries", () => {
	it("orders emoji by first use, counts every user, lists the first 20", () => {
		const rows = [row(1, "👍", 10), row(2, "❤️", 5), row(3, "👍", 20)];
		for (let u = 10; u < 35; u++) rows.push(row(u, "❤️", 100 + u));
		const { summary } = summarize(rows);
		assert.deepEqual(summary.map(s => s.emoji), ["❤️", "👍"]);
		assert.equal(summary[0].count, 26);
		assert.equal(summary[0].user_ids.length, 20);
		assert.deepEqual(summary[0].user_ids.slice(0, 3), [2, 10, 11]);
		assert.deepEqual(summary[1], { emoji: "👍", count: 2, user_ids: [1, 3] });
	});

	it("says `me` for the viewer, even past the 20 listed; nobody for a pushed payload", () => {
		const rows = Array.from({ length: 25 }, (_, i) => row(i + 1, "🎉", i));
		assert.equal(forViewer(rows, 25)[0].me, true);
		assert.equal(forViewer(rows, 99)[0].me, false);
		assert.equal(forViewer(rows, null)[0].me, false);
	});

	it("shows only the first 20 distinct emoji", () => {
		const emoji = Array.from({ length: 21 }, (_, i) => String.fromCodePoint(0x1f600 + i));
		const rows = emoji.map((e, i) => row(1, e, i));
		assert.equal(summarize(rows).summary.length, 20);
		assert.equal(isShown(rows, emoji[19]), true);
		assert.equal(isShown(rows, emoji[20]), false);
	});

	it("pastTheLimit: a new 21st emoji goes, even one stamped in the same millisecond that sorts before the 20th", () => {
		const emoji = Array.from({ length: 21 }, (_, i) => String.fromCodePoint(0x1f600 + i));
		const twenty = emoji.slice(0, 20).map((e, i) => row(1, e, i));
		assert.equal(pastTheLimit(twenty, emoji[19], twenty[19].reaction_key), false, "the 20th stays");
		// Stored after the 20th, same time, a smaller id: by time alone it would push the 20th out.
		const tied: ReactionRow = { ...row(2, emoji[20], 19), _id: "000000" };
		const rows = [...twenty, tied];
		assert.equal(isShown(rows, emoji[20]), true, "time order alone lets it in");
		assert.equal(pastTheLimit(rows, emoji[20], tied.reaction_key), true);
		// Another user's reaction with an emoji already there is never past it.
		const again = row(3, emoji[4], 30);
		assert.equal(pastTheLimit([...twenty, again], emoji[4], again.reaction_key), false);
	});
});
