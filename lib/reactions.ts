/**
 * Reactions: what an emoji may be, and a message's summary from its stored reactions.
 *
 * Each reaction is its own document in the messages service's `reactions` collection, one per
 * (message, user, emoji), with the unique `reaction_key`: reacting is one insert and unreacting
 * one remove, so two users reacting at the same instant both count on any store and from any
 * node (FerretDB 1.x rewrites a whole document per update: reactions kept inside the message
 * would lose one of two concurrent updates).
 */
import { validationError } from "./errors";

/** Characters in an emoji: Unicode code points (a family emoji with its joiners is 7 or so). */
export const MAX_EMOJI_CHARS = 32;
/** The same in UTF-8 bytes: 32 code points of at most 4 bytes. */
export const MAX_EMOJI_BYTES = 128;
/** Distinct emoji on one message. */
export const MAX_DISTINCT_EMOJI = 20;
/** The users listed per emoji in a summary (`count` says how many there are in all). */
export const MAX_LISTED_USERS = 20;

/** `:thumbsup:`, `:+1:`, `:party-parrot:`: lower case (an upper-case one is lowered), 1–30 inside the colons. */
const SHORTCODE = /^:[a-z0-9_+-]{1,30}:$/;
/**
 * A Unicode emoji: only pictographs and what emoji sequences are made of (joiners, variation
 * selectors, skin tones, keycaps, flags' regional indicators, tags), with at least one pictograph,
 * regional indicator or keycap in it: "abc", "123", "👍 " and plain punctuation are refused.
 */
const EMOJI_PARTS = /^(?:\p{Extended_Pictographic}|\p{Emoji_Component}|\u200D|\uFE0E|\uFE0F|\u20E3)+$/u;
const EMOJI_CORE = /\p{Extended_Pictographic}|\p{Regional_Indicator}|\u20E3/u;

function refuse(message: string): never {
	throw validationError(message, [{ field: "emoji", type: "emoji", message }]);
}

/**
 * The emoji as stored (a shortcode in lower case), or a VALIDATION_ERROR: 1–32 code points and at
 * most 128 bytes, no whitespace or control character, a Unicode emoji or a `:shortcode:`.
 */
export function normalizeEmoji(raw: unknown): string {
	if (typeof raw !== "string") refuse("An emoji is a string");
	const chars = [...raw].length;
	if (chars < 1 || chars > MAX_EMOJI_CHARS || Buffer.byteLength(raw, "utf8") > MAX_EMOJI_BYTES) refuse(`An emoji has 1–${MAX_EMOJI_CHARS} characters`);
	if (/[\s\p{Cc}]/u.test(raw)) refuse("An emoji has no whitespace");
	if (raw.startsWith(":")) {
		const code = raw.toLowerCase();
		if (!SHORTCODE.test(code)) refuse("A shortcode is :name: with a-z, 0-9, _, + or - inside");
		return code;
	}
	if (!EMOJI_PARTS.test(raw) || !EMOJI_CORE.test(raw)) refuse("Not an emoji: give a Unicode emoji or a :shortcode:");
	return raw;
}

/** One stored reaction. */
export interface ReactionRow {
	_id: string;
	message_id: string;
	conversation_id: string;
	user_id: number;
	emoji: string;
	reaction_key: string;
	created_at: Date | string;
}

export const reactionKey = (messageId: string, userId: number, emoji: string) => `${messageId}:${userId}:${emoji}`;

export interface ReactionSummary {
	emoji: string;
	count: number;
	user_ids: number[];
}

export type ViewerReaction = ReactionSummary & { me: boolean };

/** Time order of reactions; the id breaks ties, so every node agrees on it. */
function byTime(a: ReactionRow, b: ReactionRow): number {
	const d = new Date(a.created_at).getTime() - new Date(b.created_at).getTime();
	return d !== 0 ? d : a._id < b._id ? -1 : a._id > b._id ? 1 : 0;
}

/**
 * One message's reactions: one entry per emoji in the order each was first used, the first 20
 * users of each by time. Only the first 20 distinct emoji show: should a race have stored a
 * 21st (see messages.react), it never appears.
 */
export function summarize(rows: readonly ReactionRow[]): { summary: ReactionSummary[]; reactors: Map<string, Set<number>> } {
	const entries = new Map<string, { summary: ReactionSummary; users: Set<number> }>();
	for (const row of [...rows].sort(byTime)) {
		let entry = entries.get(row.emoji);
		if (!entry) {
			if (entries.size >= MAX_DISTINCT_EMOJI) continue;
			entry = { summary: { emoji: row.emoji, count: 0, user_ids: [] }, users: new Set() };
			entries.set(row.emoji, entry);
		}
		if (entry.users.has(row.user_id)) continue;
		entry.users.add(row.user_id);
		entry.summary.count++;
		if (entry.summary.user_ids.length < MAX_LISTED_USERS) entry.summary.user_ids.push(row.user_id);
	}
	return {
		summary: [...entries.values()].map(e => e.summary),
		reactors: new Map([...entries].map(([emoji, e]) => [emoji, e.users])),
	};
}

/** The summary as `viewerId` sees it (`me`); null: nobody in particular (a pushed event), `me` false. */
export function forViewer(rows: readonly ReactionRow[], viewerId: number | null): ViewerReaction[] {
	const { summary, reactors } = summarize(rows);
	return summary.map(s => ({ ...s, me: viewerId !== null && !!reactors.get(s.emoji)?.has(viewerId) }));
}

/** Is `emoji` among the emoji the summary shows (the first 20 by first use)? */
export function isShown(rows: readonly ReactionRow[], emoji: string): boolean {
	return summarize(rows).reactors.has(emoji);
}

/**
 * Whether the reaction just stored under `key` must go again: its emoji is new and 20 others were
 * there besides it (exact where reactions to a message are stored one at a time), or, of emoji
 * stored at once on two nodes, it is not among the first 20 by time.
 */
export function pastTheLimit(rows: readonly ReactionRow[], emoji: string, key: string): boolean {
	const others = new Set(rows.filter(r => r.reaction_key !== key).map(r => r.emoji));
	return (!others.has(emoji) && others.size >= MAX_DISTINCT_EMOJI) || !isShown(rows, emoji);
}

/** Rows grouped by message id. */
export function groupByMessage(rows: readonly ReactionRow[]): Map<string, ReactionRow[]> {
	const out = new Map<string, ReactionRow[]>();
	for (const row of rows) {
		const list = out.get(row.message_id);
		if (list) list.push(row);
		else out.set(row.message_id, [row]);
	}
	return out;
}
