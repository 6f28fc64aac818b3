/**
 * Mentions: which members a message's `@username` tokens name. Pure, so the rules are tested
 * without a server (test/unit/mentions.test.ts).
 *
 * - A token is `@` followed by the characters a username may have (letters, digits, `_`, `.`,
 *   `-`; see the users service), at the start of the text or after a character that cannot be
 *   part of a username or an address: `bob@example.com` mentions nobody.
 * - Names match case-insensitively, as usernames are unique regardless of case. A username may end
 *   in `.` or `-`, so `@bob.` is bob. only if bob. is a member; else the trailing dots and dashes
 *   are punctuation and it is bob.
 * - `@all` in a group is everyone but the sender, when the sender is the group's admin or a
 *   moderator; from anyone else it mentions nobody (and is no error). In a group `@all` always means
 *   this (a member named "all" is among everyone); in a private chat it is a username like any other.
 * - Only members count (a former member or a stranger is no mention), never the sender itself;
 *   each user once, in the order of first mention.
 */

/** `@` and a username's characters, not glued to a word, an address or another `@`. */
const TOKEN = /(?<![A-Za-z0-9_.@-])@([A-Za-z0-9_.-]{1,64})/g;

export interface MentionContext {
	senderId: number;
	/** The conversation's members (the sender among them or not), with their usernames. */
	members: readonly { id: number; username: string }[];
	/** A group, where `@all` means every member. */
	isGroup: boolean;
	/** The sender may call everyone in this group (its admin or a moderator). */
	mayMentionAll: boolean;
}

/** Does this text have anything that could be a mention (no need to look up usernames otherwise)? */
export function mayMention(content: string): boolean {
	return content.includes("@");
}

/** The user ids the content mentions (unique, never the sender), in order of first mention. */
export function parseMentions(content: string, ctx: MentionContext): number[] {
	if (!mayMention(content) || ctx.members.length === 0) return [];
	const byName = new Map<string, number>();
	for (const m of ctx.members) if (m.username) byName.set(m.username.toLowerCase(), m.id);
	const out: number[] = [];
	const seen = new Set<number>([ctx.senderId]);
	const add = (id: number | undefined) => {
		if (id === undefined || seen.has(id)) return;
		seen.add(id);
		out.push(id);
	};
	for (const match of content.matchAll(TOKEN)) {
		const token = match[1].toLowerCase();
		const bare = token.replace(/[.-]+$/, "");
		if (ctx.isGroup && (token === "all" || bare === "all")) {
			if (ctx.mayMentionAll) for (const m of ctx.members) add(m.id);
			continue;
		}
		add(byName.get(token) ?? (bare ? byName.get(bare) : undefined));
	}
	return out;
}

/** Whether two lists of mentioned user ids name the same users (order and repeats aside). */
export function sameMembers(a: readonly number[], b: readonly number[]): boolean {
	const left = new Set(a);
	const right = new Set(b);
	return left.size === right.size && [...left].every(id => right.has(id));
}
