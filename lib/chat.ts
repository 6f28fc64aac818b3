/**
 * Shapes and rules shared by the chat services (conversations, messages): the documents they
 * store, what clients see of them (the API documented at /docs), and the parameter rules of their actions.
 */
import type { NotificationTargets } from "./contracts";
import type { ViewerReaction } from "./reactions";
import type { Doc } from "../mixins/docs.mixin";

export const MAX_CONTENT = 10_000;
export const MAX_GROUP_SIZE = 256;

// Patterns in params are strings: they reach the gateway (and the API documents) through the
// registry as JSON, where a RegExp would arrive as {}.
export const idRule = { type: "string", min: 1, max: 64, pattern: "^[A-Za-z0-9_-]+$" } as const;
export const userIdRule = { type: "number", integer: true, positive: true, convert: true } as const;
export const limitRule = (def: number) => ({ type: "number", integer: true, min: 1, max: 100, convert: true, optional: true, default: def }) as const;

// The chats store files as `/files/<id>` (attachments and group pictures alike): lib/file-ids.ts.
export { FILE_PATH_PATTERN, filePath, fileIdOfPath, fileIdsRule } from "./file-ids";

export interface LastMessage {
	id: string;
	content: string;
	sender_id: number;
	type: string;
	deleted: boolean;
	created_at: string;
	createdAt: string;
}

export interface ConversationDoc extends Doc {
	type: "private" | "group";
	participants: number[];
	name: string | null;
	avatar: string | null;
	admin_id: number | null;
	moderator_ids: number[];
	initiator_id: number | null;
	status: "pending" | "accepted" | "declined";
	pair_key: string;
	last_seq: number;
	last_message: LastMessage | null;
	last_activity_at: Date;
	/** Each sender's last message, by user id: moved with the head, it counts as read by its sender. */
	sent_seq?: Record<string, number>;
	nicknames: Record<string, string>;
	created_at: Date;
	updated_at: Date;
}

export interface MembershipDoc extends Doc {
	key: string;
	conversation_id: string;
	user_id: number;
	joined_at: Date;
	last_read_seq: number;
	cleared_seq: number;
	muted: boolean;
	mute_until: Date | null;
	pinned: boolean;
	hidden: boolean;
	/** The seqs of messages that mention this member, not yet read (trimmed when it reads past them). */
	mention_seqs?: number[];
}

export interface MessageDoc extends Doc {
	conversation_id: string;
	sender_id: number;
	type: "text" | "image" | "file" | "system";
	content: string;
	attachments: string[];
	seq: number;
	seq_key: string;
	client_id: string | null;
	dedupe_key: string;
	seen_by: number[];
	delivered_to: number[];
	edited_at: Date | null;
	deleted: boolean;
	/** `messageId`: the message a `message_pinned` system message is about. */
	system_data: { event: string; userId: number | null; actorId: number; messageId?: string } | null;
	/** Present while message.created is not yet on the event bus (the outbox). */
	outbox?: true;
	/** The message this one answers (same conversation); absent on others. */
	reply_to?: ReplyTo;
	/** How many messages not deleted answer this one: recounted, never incremented (see messages.send). */
	reply_count?: number;
	/** The members its content names (lib/mentions.ts); absent when none. */
	mentions?: number[];
	/** While pinned: the conversation's id (a sparse key: the pins of a conversation are found by it), when and by whom. */
	pinned_in?: string;
	pinned_at?: Date | null;
	pinned_by?: number | null;
	created_at: Date;
	updated_at: Date;
}

export interface ReplyTo {
	id: string;
	seq: number;
	sender_id: number;
	/** The first 100 characters of the original; null once it is deleted. */
	excerpt: string | null;
}

/** How much of the original a reply quotes, in characters (code points). */
export const REPLY_EXCERPT_CHARS = 100;

/** The quote a reply keeps of the message it answers. */
export function excerptOf(content: string): string {
	const chars = [...content];
	return chars.length <= REPLY_EXCERPT_CHARS ? content : chars.slice(0, REPLY_EXCERPT_CHARS).join("");
}

export const membershipKey = (conversationId: string, userId: number) => `${conversationId}:${userId}`;

const iso = (d: Date | string | null | undefined) => (d ? new Date(d).toISOString() : null);

/**
 * A member's unread count: derived from positions, never counted by hand, so it cannot drift.
 * What a member sent itself is read by it: its own last message (sent_seq, written with the head
 * in the same store operation) counts as a read position.
 */
export function unreadCount(conv: ConversationDoc, m: MembershipDoc | null): number {
	if (!m) return 0;
	return Math.max(0, conv.last_seq - readPosition(conv, m));
}

/** How many of a member's unread messages mention it: counted from positions, like unreadCount. */
export function unreadMentions(conv: ConversationDoc, m: MembershipDoc | null): number {
	if (!m?.mention_seqs?.length) return 0;
	const read = readPosition(conv, m);
	return m.mention_seqs.filter(seq => seq > read).length;
}

/** The seq up to which a member has read: what it marked read, cleared, or sent itself. */
function readPosition(conv: ConversationDoc, m: MembershipDoc): number {
	return Math.max(m.last_read_seq, m.cleared_seq, conv.sent_seq?.[String(m.user_id)] ?? 0);
}

/**
 * What the message path needs of a conversation, cached (lib/read-cache.ts) and forgotten on
 * every change to it: the document without its head (last_seq, last_message … move with every
 * message and are never read from here), each member's settings that decide delivery, and the
 * blocks between its participants. JSON-safe, so it goes through Redis and the transporter as is.
 */
export interface ConversationMeta {
	conv: Pick<ConversationDoc, "_id" | "type" | "participants" | "name" | "avatar" | "admin_id" | "moderator_ids" | "initiator_id" | "status">;
	members: MemberMeta[];
	/** [blocker, blocked] pairs among the participants. */
	blocks: [number, number][];
}

export interface MemberMeta {
	user_id: number;
	cleared_seq: number;
	muted: boolean;
	mute_until: string | null;
	hidden: boolean;
}

export function isMuted(m: Pick<MembershipDoc, "muted"> & { mute_until: Date | string | null } | null, now = Date.now()): boolean {
	if (!m?.muted) return false;
	return !m.mute_until || new Date(m.mute_until).getTime() > now;
}

/**
 * What a message of `senderId` skips, from the cached metadata: the members who blocked the sender
 * (they do not receive it live) and those who muted the conversation (no notification).
 */
export function sendingSkips(meta: ConversationMeta, senderId: number): { blockedBy: number[]; muted: number[] } {
	return {
		blockedBy: meta.blocks.filter(([, blocked]) => blocked === senderId).map(([blocker]) => blocker),
		muted: meta.members.filter(m => isMuted(m)).map(m => m.user_id),
	};
}

/**
 * Who a new message notifies: every participant but the sender, those who muted the conversation
 * and those who blocked the sender; in a pending chat, as a message request. A mentioned member
 * gets a `mention` instead, even when it muted the conversation (never when it blocked the
 * sender). The one rule, for a send (from what authorizeSend said) and for the outbox sweep
 * (conversations.notificationTargets).
 */
export function notificationTargetsOf(
	conv: Pick<ConversationMeta["conv"], "type" | "name" | "status" | "participants">,
	senderId: number,
	skips: { blockedBy: number[]; muted: number[] },
	mentions: readonly number[] = [],
): NonNullable<NotificationTargets> {
	const blocked = new Set(skips.blockedBy);
	const muted = new Set(skips.muted);
	const mentioned = new Set(mentions);
	const type = conv.status === "pending" ? "message_request" : "message";
	const recipients: NonNullable<NotificationTargets>["recipients"] = [];
	for (const userId of conv.participants) {
		if (userId === senderId || blocked.has(userId)) continue;
		if (mentioned.has(userId) && type === "message") recipients.push({ userId, type: "mention" });
		else if (!muted.has(userId)) recipients.push({ userId, type });
	}
	return { conversationType: conv.type, conversationName: conv.name, recipients };
}

/** The contract's `conversation`, as one member sees it. */
export function presentConversation(conv: ConversationDoc, m: MembershipDoc | null) {
	const cleared = m ? m.cleared_seq : 0;
	// After "clear history for me" the last message is gone for this member too.
	const last = conv.last_message && conv.last_seq > cleared ? conv.last_message : null;
	return {
		id: conv._id,
		_id: conv._id,
		type: conv.type,
		isGroup: conv.type === "group",
		participants: conv.participants,
		name: conv.name,
		avatar: conv.avatar,
		admin_id: conv.admin_id,
		moderator_ids: conv.moderator_ids,
		initiator_id: conv.initiator_id,
		status: conv.status,
		last_message: last,
		lastMessage: last,
		last_seq: conv.last_seq,
		unread_count: unreadCount(conv, m),
		unread_mentions: unreadMentions(conv, m),
		muted: isMuted(m),
		pinned: !!m?.pinned,
		nicknames: conv.nicknames ?? {},
		created_at: iso(conv.created_at),
		updated_at: iso(conv.updated_at),
	};
}
export type PresentedConversation = ReturnType<typeof presentConversation>;

export interface SenderProfile {
	id: number;
	name: string;
	avatar_url: string | null;
}

/**
 * The contract's `message`. `reactions`: its summary as the viewer sees it (messages.present reads
 * them; a message just sent has none). Messages stored before replies, mentions and pins show the
 * defaults of those fields.
 */
export function presentMessage(msg: MessageDoc, sender: SenderProfile | null, reactions: ViewerReaction[] = []) {
	const replyTo = msg.reply_to?.id ? { id: msg.reply_to.id, seq: msg.reply_to.seq, sender_id: msg.reply_to.sender_id, excerpt: msg.reply_to.excerpt ?? null } : null;
	return {
		id: msg._id,
		_id: msg._id,
		conversation_id: msg.conversation_id,
		sender_id: msg.sender_id,
		sender: sender ?? { id: msg.sender_id, name: "", avatar_url: null },
		type: msg.type,
		content: msg.deleted ? "" : msg.content,
		attachments: msg.deleted ? [] : msg.attachments,
		seq: msg.seq,
		client_id: msg.client_id,
		clientId: msg.client_id,
		seen_by: msg.seen_by,
		delivered_to: msg.delivered_to,
		edited_at: iso(msg.edited_at),
		deleted: msg.deleted,
		system_data: msg.system_data,
		// A deleted message keeps no reactions, mentions or pin (its content is gone).
		reactions: msg.deleted ? [] : reactions,
		reply_to: replyTo,
		reply_count: msg.reply_count ?? 0,
		mentions: msg.deleted ? [] : (msg.mentions ?? []),
		pinned_at: msg.deleted ? null : iso(msg.pinned_at),
		pinned_by: msg.deleted ? null : (msg.pinned_by ?? null),
		created_at: iso(msg.created_at),
		createdAt: iso(msg.created_at),
		updated_at: iso(msg.updated_at),
	};
}
export type PresentedMessage = ReturnType<typeof presentMessage>;

export function lastMessageOf(msg: MessageDoc): LastMessage {
	const created = new Date(msg.created_at).toISOString();
	return { id: msg._id, content: msg.deleted ? "" : msg.content.slice(0, 200), sender_id: msg.sender_id, type: msg.type, deleted: msg.deleted, created_at: created, createdAt: created };
}

/** Opaque list cursor: the last item's sort position. */
export function encodeCursor(at: Date | string, id: string): string {
	return Buffer.from(JSON.stringify([new Date(at).toISOString(), id])).toString("base64url");
}

export function decodeCursor(cursor: string): { at: Date; id: string } | null {
	try {
		const [at, id] = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8")) as [string, string];
		const date = new Date(at);
		if (Number.isNaN(date.getTime()) || typeof id !== "string") return null;
		return { at: date, id };
	} catch {
		return null;
	}
}
