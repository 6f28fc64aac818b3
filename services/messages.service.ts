/**
 * messages: sending, editing, deleting, receipts, history and search. Owns the collection
 * messages. Every message gets `seq`, its position in the conversation: 1, 2, 3 … with no gap,
 * because a seq exists only as a stored message (unique per conversation) and a send that
 * loses a race for a seq takes the next one. A clientId already used by the sender in the
 * conversation returns the first message and pushes nothing again.
 *
 * Writes to one stored message (edit, delete, receipts, the outbox flag, pins, reply counts) run
 * one at a time in this process: FerretDB 1.x applies an update by reading the document and
 * writing all of it back, so two updates of one message at once lose one of them (a delete came
 * back undone when the outbox flag was set at the same moment). For the same reason reactions
 * are not in the message: each is a document of the collection `reactions` (lib/reactions.ts),
 * and a root's `reply_count` is recounted and set, never incremented.
 *
 * Replies, mentions, pins and reactions (contract v1.1): a reply keeps `reply_to` (the original's
 * id, seq, sender and a 100-character excerpt, null once the original is deleted); `mentions` are
 * parsed from `@username` (lib/mentions.ts) and passed to the notifications and to the
 * conversation's unread mentions; a pinned message has `pinned_in` (its conversation: the sparse
 * key of the pins), `pinned_at` and `pinned_by`.
 */
import crypto from "node:crypto";
import type { Context, ServiceSchema, ServiceSettingSchema } from "moleculer";
import {
	type ConversationMeta,
	excerptOf,
	MAX_CONTENT,
	type MemberMeta,
	type MessageDoc,
	type SenderProfile,
	fileIdOfPath,
	fileIdsRule,
	filePath,
	idRule,
	lastMessageOf,
	limitRule,
	notificationTargetsOf,
	presentMessage,
	type ReplyTo,
	userIdRule,
} from "../lib/chat";
import { mayMention, parseMentions, sameMembers } from "../lib/mentions";
import { forViewer, groupByMessage, MAX_DISTINCT_EMOJI, MAX_EMOJI_BYTES, normalizeEmoji, pastTheLimit, reactionKey, type ReactionRow, summarize } from "../lib/reactions";
import { EVENTS } from "../lib/constants";
import { type BroadcastPayloads, callAction, type NotificationTargets } from "../lib/contracts";
import { CHANNELS, DEAD_LETTER_QUEUE, prefixed } from "../lib/durable-events";
import { countMetric, setMetric } from "../lib/metrics";
import { appError, forbidden, notFound, validationError } from "../lib/errors";
import { ATTACHMENT_PATTERN } from "../lib/file-ids";
import { SerialWork } from "../lib/serial-work";
import type { CallMeta } from "../lib/meta";
import { arrayOf, errorExample, errorResponse, errors, ok, ref, schema } from "../lib/api-schemas";
import { memberOf, userOf } from "../middlewares/authorize.middleware";
import { createDocsMixin, type DocsMixinThis, escapeRegex, isDuplicateKeyError } from "../mixins/docs.mixin";
import { PublisherMixin, type PublisherThis } from "../mixins/publisher.mixin";
import { PushMixin, type PushThis, userRoom } from "../mixins/push.mixin";

type Ctx<P = Record<string, never>> = Context<P, CallMeta>;
/** What messages.send already knows of the conversation, so the notification step need not ask for it. */
type KnownConversation = Pick<ConversationMeta["conv"], "type" | "name" | "status" | "participants"> & { blockedBy: number[]; muted: number[] };
/** A context, or the broker itself for work that no request started (the outbox sweep). */
type Caller = { call(action: string, params?: unknown): Promise<unknown> };
type Presented = ReturnType<typeof presentMessage>;
/**
 * How present() gets reactions: by default one query for the page; `rows` when the caller read
 * them already, or null for messages that cannot have any (just sent). `viewer`: whose `me`
 * (default the caller; null for a payload pushed to everyone: `me` false).
 */
type PresentOptions = { rows?: Map<string, ReactionRow[]> | null; viewer?: number | null };

const PROFILE_TTL_MS = 60_000;
/** Pinned messages per conversation. */
const MAX_PINS = 50;
/** How often the queue metrics are read (when metrics are on). */
const METRICS_INTERVAL_MS = 15_000;
const MAX_CACHED_HEADS = 10_000;

interface MessagesThis extends DocsMixinThis<"messages" | "reactions">, PushThis, PublisherThis {
	outboxTimer: NodeJS.Timeout | null;
	metricsTimer: NodeJS.Timeout | null;
	reportQueueMetrics(): Promise<void>;
	notifiedBatch: Set<string>;
	notifiedTimer: NodeJS.Timeout | null;
	/** The outbox-flag write in flight, if any (one at a time). */
	notifiedFlushing: Promise<void> | null;
	/** How long the next batch of outbox flags waits: at least as long as the last write took. */
	notifiedDelayMs: number;
	notifiedStopping: boolean;
	announce(msg: MessageDoc, sender: SenderProfile, known?: KnownConversation): Promise<void>;
	markNotified(messageId: string): void;
	scheduleNotifiedFlush(): void;
	flushNotified(): Promise<void>;
	sweepOutbox(): Promise<void>;
	heads: Map<string, number>;
	locks: SerialWork;
	profiles: Map<number, { profile: SenderProfile; until: number }>;
	access(ctx: Ctx<unknown>, conversationId: string, userId: number): Promise<{ conv: ConversationMeta["conv"]; membership: MemberMeta }>;
	withLock<T>(key: string, fn: () => Promise<T>): Promise<T>;
	withLocks<T>(keys: string[], fn: () => Promise<T>): Promise<T>;
	audience(ctx: Ctx<unknown>, conversationId: string, userId: number, either: boolean): Promise<number[]>;
	pushReactions(ctx: Ctx<unknown>, msg: MessageDoc, reactorId: number, rows: ReactionRow[]): Promise<void>;
	hideReceiptsFor(ctx: Ctx<unknown>, msgs: Presented[], viewerId: number): Promise<Presented[]>;
	releaseFiles(ctx: Ctx<unknown>, refs: string[]): void;
	maxSeq(conversationId: string): Promise<number>;
	insertWithSeq(conversationId: string, doc: Omit<MessageDoc, "_id" | "seq" | "seq_key">): Promise<{ msg: MessageDoc; created: boolean }>;
	senderProfiles(caller: Caller, ids: number[]): Promise<Map<number, SenderProfile>>;
	present(ctx: Ctx<unknown>, msgs: MessageDoc[], options?: PresentOptions): Promise<Presented[]>;
	reactionsOf(msgs: MessageDoc[]): Promise<Map<string, ReactionRow[]>>;
	replyTarget(ctx: Ctx<unknown>, conversationId: string, userId: number, messageId: string): Promise<ReplyTo>;
	refreshReplyCount(ctx: Ctx<unknown>, rootId: string): Promise<void>;
	setReplyExcerpts(rootId: string, excerpt: string | null): Promise<void>;
	mentionsIn(caller: Caller, content: string, senderId: number, conv: Pick<ConversationMeta["conv"], "type" | "participants" | "admin_id" | "moderator_ids">): Promise<number[]>;
	mayPin(conv: ConversationMeta["conv"], userId: number): boolean;
	writeSystem(ctx: Ctx<unknown>, p: { conversationId: string; event: string; userId: number | null; actorId: number; messageId?: string }): Promise<Presented>;
	loadOwnMessage(ctx: Ctx<unknown>, messageId: string, userId: number): Promise<{ msg: MessageDoc; conv: ConversationMeta["conv"] }>;
	record(ctx: Ctx<unknown>, msg: MessageDoc): Promise<void>;
}

const SYSTEM_TEXT: Record<string, string> = {
	group_created: "created the group",
	member_added: "added a member",
	member_removed: "removed a member",
	member_left: "left the group",
	admin_changed: "is the new admin",
	moderator_promoted: "made a member moderator",
	moderator_demoted: "removed a moderator",
	renamed: "renamed the group",
	avatar_changed: "changed the group picture",
	message_pinned: "pinned a message",
};

/** The answer for a message the caller cannot see: the same as for one that does not exist. */
const MESSAGE_NOT_FOUND = errorResponse("`NOT_FOUND`: no such message, or the caller cannot see it (not a member of its conversation, or its history cleared). The answers are the same.", {
	notFound: errorExample(404, "NOT_FOUND", "Message not found"),
});
/** The emoji param: its real limits (32 characters, emoji or shortcode) are checked by lib/reactions.ts. */
const emojiRule = { type: "string", min: 1, max: MAX_EMOJI_BYTES } as const;
const EMOJI_HELP = `A Unicode emoji (e.g. 👍, ❤️, 👨‍👩‍👧) or a \`:shortcode:\` (\`:[a-z0-9_+-]{1,30}:\`, upper case is lowered): 1–32 characters (Unicode code points), at most ${MAX_EMOJI_BYTES} bytes, no whitespace. Plain text is refused.`;

/** A file of this server: its id, its /files/<id> path, or a URL ending in that path. */
const attachmentRule = { type: "string", max: 2048, pattern: ATTACHMENT_PATTERN.source } as const;

const MessagesService: ServiceSchema<ServiceSettingSchema, MessagesThis> = {
	name: "messages",
	mixins: [
		createDocsMixin<"messages" | "reactions">({
			collections: {
				messages: {
					definition: {
						conversation_id: String,
						sender_id: Number,
						type: String,
						content: String,
						attachments: [String],
						seq: Number,
						seq_key: String,
						client_id: { type: String, default: null },
						dedupe_key: String,
						seen_by: [Number],
						delivered_to: [Number],
						edited_at: { type: Date, default: null },
						deleted: Boolean,
						system_data: { type: Object, default: null },
						// Replies, mentions and pins: absent until used (the message:send of others writes none).
						reply_to: { type: Object, default: undefined },
						reply_count: { type: Number, default: undefined },
						mentions: { type: [Number], default: undefined },
						pinned_in: { type: String, default: undefined },
						pinned_at: { type: Date, default: undefined },
						pinned_by: { type: Number, default: undefined },
						// Present (true) only while message.created is not yet on the bus: the outbox.
						outbox: { type: Boolean, default: undefined },
						// The outbox flag of messages stored before it became sparse (cleared in started()).
						notified: { type: Boolean, default: undefined },
						created_at: Date,
						updated_at: Date,
					},
					indexes: [
						{ fields: { seq_key: 1 }, unique: true },
						{ fields: { dedupe_key: 1 }, unique: true },
						{ fields: { conversation_id: 1, seq: -1 } },
						{ fields: { conversation_id: 1 } },
						{ fields: { outbox: 1 }, sparse: true },
						// The files service asks which files are still attached (fileRefs).
						{ fields: { attachments: 1 } },
						// A thread (the replies to a message), and the replies whose excerpt follows their original.
						{ fields: { "reply_to.id": 1 }, sparse: true },
						// A conversation's pins: only pinned messages have the field.
						{ fields: { pinned_in: 1 }, sparse: true },
					],
				},
				// One document per (message, user, emoji): reacting is one insert (lib/reactions.ts).
				reactions: {
					definition: {
						message_id: String,
						conversation_id: String,
						user_id: Number,
						emoji: String,
						reaction_key: String,
						created_at: Date,
					},
					indexes: [
						{ fields: { reaction_key: 1 }, unique: true },
						{ fields: { message_id: 1 } },
						{ fields: { conversation_id: 1 } },
					],
				},
			},
		}),
		PushMixin,
		PublisherMixin,
	],

	actions: {
		send: {
			rest: "POST /conversations/:conversationId/messages",
			socket: { namespace: "/chat", event: "message:send" },
			openapi: {
				operationId: "sendMessage",
				tag: "Messages",
				summary: "Send a message",
				description:
					"Every participant gets `message:created` on the `/chat` socket (except members of a group who blocked the sender). " +
					"A retry with the `clientId` of a send that went through answers the first message and sends nothing again. " +
					"In a pending message request only the initiator may send; in a declined one nobody may. " +
					"`@username` of a member in `content` puts that user in `mentions` (`@all` in a group: every member, when the sender is its admin or a moderator; from anyone else it mentions nobody). " +
					"With `replyTo` the message answers another one of this conversation: it gets `reply_to` (an excerpt of the original), and the original's `reply_count` grows (its participants get `message:updated`).",
				params: {
					conversationId: "The conversation's id. A conversation the caller is not a member of answers 404, like one that does not exist.",
					content: "Trimmed.",
					attachments: "A file uploaded to this server: its id, `/files/<id>`, or its full URL.",
					clientId:
						"The client's own id for this message. Sending again with a clientId this sender already used in this conversation returns the first message and notifies nobody again.",
					replyTo:
						"The id of the message this one answers: a message of this conversation the caller can see and not deleted (otherwise 400 `VALIDATION_ERROR` on `replyTo`, the same for a message that does not exist or is in another conversation).",
				},
				responses: {
					...errors(401, 429, 503),
					...errors(400),
					404: ref("responses", "ConversationNotFound"),
					200: ok("The message (for a retry with a used `clientId`: the first one).", schema("Message")),
					403: errorResponse("`FORBIDDEN`: the caller may not send here now.", {
						pending: errorExample(403, "FORBIDDEN", "Accept the message request before replying"),
						declined: errorExample(403, "FORBIDDEN", "This message request was declined"),
						blocked: errorExample(403, "FORBIDDEN", "You cannot message this user"),
					}),
					...errors(413),
				},
			},
			params: {
				$$strict: "remove",
				conversationId: idRule,
				content: { type: "string", optional: true, max: MAX_CONTENT, default: "" },
				attachments: { type: "array", optional: true, max: 10, items: attachmentRule, default: [] },
				clientId: { type: "string", optional: true, min: 1, max: 100 },
				replyTo: { ...idRule, optional: true },
			},
			async handler(this: MessagesThis, ctx: Ctx<{ conversationId: string; content: string; attachments: string[]; clientId?: string; replyTo?: string }>) {
				const me = userOf(ctx);
				const { conversationId, attachments, clientId } = ctx.params;
				const content = ctx.params.content.trim();
				if (!content && attachments.length === 0) {
					throw validationError("A message needs content or an attachment", [{ field: "content", type: "required", message: "Empty message" }]);
				}
				// A retry of a send that went through hits the unique dedupe_key in insertWithSeq:
				// it gets the first message back, and nothing is pushed again.
				const dedupeKey = clientId ? `${conversationId}:${me.id}:${clientId}` : `${conversationId}:${me.id}:auto:${crypto.randomUUID()}`;
				const { conversation, blockedBy, muted } = await callAction(ctx, "conversations.authorizeSend", { conversationId, senderId: me.id });
				// Attachments must be files of this server that the sender uploaded; the message's
				// type follows the first one.
				// Each costs something only when used: a reply reads its original, a possible mention the
				// members' names (cached), attachments are checked by the files service.
				const [files, replyTo, mentions] = await Promise.all([
					attachments.length > 0 ? callAction(ctx, "files.verifyAttachments", { refs: attachments, ownerId: me.id }) : [],
					ctx.params.replyTo ? this.replyTarget(ctx, conversationId, me.id, ctx.params.replyTo) : undefined,
					mayMention(content) ? this.mentionsIn(ctx, content, me.id, conversation) : [],
				]);
				const now = new Date();
				const { msg, created } = await this.insertWithSeq(conversationId, {
					conversation_id: conversationId,
					sender_id: me.id,
					type: files.length === 0 ? "text" : files[0].fileType === "image" ? "image" : "file",
					content,
					attachments: files.map(f => f.url),
					client_id: clientId ?? null,
					dedupe_key: dedupeKey,
					seen_by: [],
					delivered_to: [],
					edited_at: null,
					deleted: false,
					system_data: null,
					...(replyTo ? { reply_to: replyTo } : {}),
					...(mentions.length > 0 ? { mentions } : {}),
					// The outbox flag: removed once message.created is safely on the event bus.
					outbox: true,
					created_at: now,
					updated_at: now,
				});
				// A new message has no reactions yet: no query for them (a retry's may have some).
				const [presented] = await this.present(ctx, [msg], created ? { rows: null } : {});
				// The conversation's head is moved on a retry too (the writes are no-ops when already
				// done), so a first attempt that died half-way is healed; nothing is pushed again.
				await this.record(ctx, msg);
				if (!created) return presented;
				countMetric(this.broker, "parley_messages_sent_total");
				const recipients = conversation.participants.filter(p => !blockedBy.includes(p));
				await this.push(ctx, [{ rooms: recipients.map(userRoom), event: "message:created", payload: presented }]);
				// The original's reply_count, recounted (its participants get message:updated).
				// Not the sender's failure: the message is stored; the next reply or deletion recounts.
				if (msg.reply_to) await this.refreshReplyCount(ctx, msg.reply_to.id).catch(err => this.logger.warn("reply_count not updated", (err as Error).message));
				// Published after the message is stored, without holding up the sender's ack;
				// if it fails now, the outbox sweep publishes it later.
				const known = { type: conversation.type, name: conversation.name, status: conversation.status, participants: conversation.participants, blockedBy, muted };
				this.inBackground("message.created publish", () => this.announce(msg, presented.sender, known));
				return presented;
			},
		},

		edit: {
			socket: { namespace: "/chat", event: "message:edit" },
			openapi: {
				tag: "Messages",
				summary:
					"Edit one of the caller's own messages (its new `content`, trimmed); the participants get `message:updated`. Its `mentions` are parsed again (no new notification), and the replies quoting it get the new excerpt.",
				ack: schema("Message"),
			},
			params: { $$strict: "remove", messageId: idRule, content: { type: "string", min: 1, max: MAX_CONTENT } },
			async handler(this: MessagesThis, ctx: Ctx<{ messageId: string; content: string }>) {
				const me = userOf(ctx);
				const { msg, conv } = await this.loadOwnMessage(ctx, ctx.params.messageId, me.id);
				if (msg.sender_id !== me.id || msg.type === "system") throw forbidden("Only the sender edits a message");
				if (msg.deleted) throw appError("CONFLICT", "A deleted message cannot be edited");
				const content = ctx.params.content.trim();
				if (!content) throw validationError("Empty message", [{ field: "content", type: "required", message: "Empty message" }]);
				// An edit says something new: who may not send here now (a block in a private chat, a
				// declined request, a deleted other side) may not edit either.
				const { blockedBy } = await callAction(ctx, "conversations.authorizeSend", { conversationId: conv._id, senderId: me.id });
				const mentions = mayMention(content) ? await this.mentionsIn(ctx, content, me.id, conv) : [];
				const now = new Date();
				// Mentions written only when there are some, or were.
				const mentionsSet = mentions.length > 0 || (msg.mentions?.length ?? 0) > 0 ? { mentions } : {};
				const updated = await this.withLock(`m:${msg._id}`, async () => {
					// Not over a deletion that got in first.
					await this.stores.messages.updateMany({ _id: msg._id, deleted: false }, { $set: { content, edited_at: now, updated_at: now, ...mentionsSet } });
					const fresh = (await this.stores.messages.findById(msg._id)) as MessageDoc | null;
					if (!fresh || fresh.deleted) throw appError("CONFLICT", "A deleted message cannot be edited");
					return fresh;
				});
				// The replies quote it: their excerpt follows (only a message with replies has any to write).
				if ((updated.reply_count ?? 0) > 0) {
					await this.setReplyExcerpts(updated._id, excerptOf(content));
				}
				// Who it names changed: their unread mentions follow (only then is anything written).
				if (!sameMembers(msg.mentions ?? [], mentions)) {
					await callAction(ctx, "conversations.setMentions", { conversationId: conv._id, seq: msg.seq, senderId: msg.sender_id, mentions });
				}
				const rows = await this.reactionsOf([updated]);
				const [presented] = await this.present(ctx, [updated], { rows });
				await ctx.call("conversations.updateLastMessage", { conversationId: conv._id, lastMessage: lastMessageOf(updated) });
				// Who blocked the sender never got the message live, and is not told it changed.
				const rooms = conv.participants.filter(p => !blockedBy.includes(p)).map(userRoom);
				const [pushed] = await this.present(ctx, [updated], { rows, viewer: null });
				await this.push(ctx, [{ rooms, event: "message:updated", payload: pushed }]);
				return presented;
			},
		},

		remove: {
			socket: { namespace: "/chat", event: "message:delete", ack: "none" },
			openapi: {
				tag: "Messages",
				summary:
					"Delete a message (its sender, or in a group the admin or a moderator): it stays as an empty tombstone with its `seq`, its attachments, notifications, reactions and pin go, and the participants get `message:deleted` " +
					"(and `message:unpinned` if it was pinned). Replies to it keep `reply_to` with a `null` excerpt; the message it answered gets its new `reply_count` (`message:updated`).",
			},
			params: { $$strict: "remove", messageId: idRule },
			async handler(this: MessagesThis, ctx: Ctx<{ messageId: string }>) {
				const me = userOf(ctx);
				const { msg, conv } = await this.loadOwnMessage(ctx, ctx.params.messageId, me.id);
				const groupManager = conv.type === "group" && (conv.admin_id === me.id || conv.moderator_ids.includes(me.id));
				if (!(msg.sender_id === me.id && msg.type !== "system") && !groupManager) throw forbidden("Only the sender, or a group admin or moderator, deletes a message");
				if (msg.deleted) return null;
				// Kept as a tombstone: its seq stays, so the sequence has no hole. Only the call that
				// actually deleted it (deleted: false then) tells anyone and lets the files go.
				// A deleted message is no longer pinned, and mentions nobody.
				const updated = await this.withLock(`m:${msg._id}`, async () => {
					const changed = await this.stores.messages.updateMany(
						{ _id: msg._id, deleted: false },
						{ $set: { deleted: true, content: "", attachments: [], updated_at: new Date() }, $unset: { pinned_in: true, pinned_at: true, pinned_by: true, mentions: true } },
					);
					return changed > 0 ? ((await this.stores.messages.findById(msg._id)) as MessageDoc | null) : null;
				});
				if (!updated) return null;
				// Its reactions go; the replies quoting it keep no excerpt. (A reaction or reply made on
				// another node at this very moment is caught there: a deleted message presents no
				// reactions, and a new reply finds its original deleted when it recounts.)
				await Promise.all([
					this.stores.reactions.removeMany({ message_id: msg._id }),
					this.setReplyExcerpts(msg._id, null),
					ctx.call("conversations.updateLastMessage", { conversationId: conv._id, lastMessage: lastMessageOf(updated) }),
					// It names nobody now: nobody keeps it as an unread mention.
					msg.mentions?.length ? callAction(ctx, "conversations.setMentions", { conversationId: conv._id, seq: msg.seq, senderId: msg.sender_id, mentions: [] }) : null,
				]);
				// Who blocked the sender never got the message live, and is not told it went.
				const audience = await this.audience(ctx, conv._id, msg.sender_id, false);
				await this.push(ctx, [{ rooms: audience.map(userRoom), event: "message:deleted", payload: { messageId: msg._id, conversationId: conv._id } }]);
				// Its pin went with it: everyone sees the pinned bar, everyone is told.
				if (msg.pinned_in) {
					await this.push(ctx, [{ rooms: conv.participants.map(userRoom), event: "message:unpinned", payload: { conversationId: conv._id, messageId: msg._id, userId: me.id } }]);
				}
				// One reply fewer in its thread (a failure here is healed by the next reply or deletion).
				if (msg.reply_to) await this.refreshReplyCount(ctx, msg.reply_to.id).catch(err => this.logger.warn("reply_count not updated", (err as Error).message));
				this.releaseFiles(ctx, msg.attachments);
				// Its notifications quote it: they go too.
				this.inBackground("message.deleted publish", () => this.publishPatiently(CHANNELS.messageDeleted, { eventId: `deleted:${msg._id}`, messageId: msg._id }));
				return null;
			},
		},

		markRead: {
			socket: { namespace: "/chat", event: "message:read", ack: "none" },
			openapi: {
				tag: "Messages",
				summary:
					"Mark a message of another member read by the caller (the conversation is read up to its `seq`); the conversation's members get `message:read` and `message:status` (`read`).",
			},
			params: { $$strict: "remove", messageId: idRule },
			async handler(this: MessagesThis, ctx: Ctx<{ messageId: string }>) {
				const me = userOf(ctx);
				const { msg, conv } = await this.loadOwnMessage(ctx, ctx.params.messageId, me.id);
				if (msg.sender_id === me.id) return null;
				await ctx.call("conversations.advanceRead", { conversationId: conv._id, userId: me.id, seq: msg.seq });
				if (msg.seen_by.includes(me.id)) return null;
				await this.withLock(`m:${msg._id}`, () => this.stores.messages.updateById(msg._id, { $addToSet: { seen_by: me.id, delivered_to: me.id } }));
				const readAt = new Date().toISOString();
				// A receipt says the reader is here: not for anyone with a block with it either way.
				const rooms = (await this.audience(ctx, conv._id, me.id, true)).map(userRoom);
				await this.push(ctx, [
					{ rooms, event: "message:read", payload: { messageId: msg._id, conversationId: conv._id, userId: me.id, readAt } },
					{ rooms, event: "message:status", payload: { messageId: msg._id, userId: me.id, status: "read", timestamp: readAt } },
				]);
				return null;
			},
		},

		markDelivered: {
			socket: { namespace: "/chat", event: "message:delivered", ack: "none" },
			openapi: {
				tag: "Messages",
				summary: "Say that a message of another member reached the caller's device; the conversation's members get `message:status` (`delivered`).",
			},
			params: { $$strict: "remove", messageId: idRule },
			async handler(this: MessagesThis, ctx: Ctx<{ messageId: string }>) {
				const me = userOf(ctx);
				const { msg, conv } = await this.loadOwnMessage(ctx, ctx.params.messageId, me.id);
				if (msg.sender_id === me.id || msg.delivered_to.includes(me.id)) return null;
				await this.withLock(`m:${msg._id}`, () => this.stores.messages.updateById(msg._id, { $addToSet: { delivered_to: me.id } }));
				const rooms = (await this.audience(ctx, conv._id, me.id, true)).map(userRoom);
				await this.push(ctx, [{ rooms, event: "message:status", payload: { messageId: msg._id, userId: me.id, status: "delivered", timestamp: new Date().toISOString() } }]);
				return null;
			},
		},

		list: {
			rest: "GET /conversations/:conversationId/messages",
			socket: { namespace: "/chat", event: "message:list" },
			member: "conversationId",
			openapi: {
				operationId: "listMessages",
				tag: "Messages",
				summary: "A conversation's messages, a page at a time",
				description:
					"Paged by `seq`. Without a cursor: the newest messages, newest first. `before=41`: the page below seq 41, newest first. " +
					"`after=41`: what came after seq 41, oldest first (to catch up after a gap). Not both. " +
					"Messages before the caller cleared its history are not shown; deleted messages appear as tombstones. " +
					"With `replyTo`: the thread of that message, its replies only (not the message itself), always oldest first by `seq`: without a cursor the first `limit` replies, " +
					"`after=41` the replies after seq 41, `before=41` the last `limit` replies before seq 41. A `replyTo` that is not a message of this conversation gives an empty list.",
				params: {
					conversationId: "The conversation's id. A conversation the caller is not a member of answers 404, like one that does not exist.",
					limit: "At most this many messages.",
					before: "Messages with a smaller `seq`, newest first (in a thread: oldest first).",
					after: "Messages with a greater `seq`, oldest first. Not with `before`.",
					replyTo: "Only the replies to this message (its thread), oldest first.",
				},
				responses: {
					...errors(401, 429, 503),
					...errors(400),
					404: ref("responses", "ConversationNotFound"),
					200: ok("One page of messages.", arrayOf(schema("Message"))),
				},
			},
			params: {
				$$strict: "remove",
				conversationId: idRule,
				limit: limitRule(50),
				before: { type: "number", integer: true, min: 1, convert: true, optional: true },
				after: { type: "number", integer: true, min: 0, convert: true, optional: true },
				replyTo: { ...idRule, optional: true },
			},
			async handler(this: MessagesThis, ctx: Ctx<{ conversationId: string; limit: number; before?: number; after?: number; replyTo?: string }>) {
				const me = userOf(ctx);
				const { conversationId, limit, before, after, replyTo } = ctx.params;
				if (before !== undefined && after !== undefined) throw validationError("Give before or after, not both", [{ field: "after", type: "forbidden", message: "Not with before" }]);
				const { membership } = memberOf(ctx);
				// History cleared by this member stays hidden from it.
				const floor = Math.max(membership.cleared_seq, after ?? 0);
				const seq: Record<string, number> = { $gt: floor };
				if (before !== undefined) seq.$lt = before;
				let msgs: MessageDoc[];
				if (replyTo) {
					// A thread, oldest first. reply_to.id first: NeDB uses the index of the first field.
					const query = { "reply_to.id": replyTo, conversation_id: conversationId, seq };
					msgs = (await this.stores.messages.find(query, { sort: [before !== undefined ? "-seq" : "seq"], limit })) as MessageDoc[];
					if (before !== undefined) msgs.reverse();
				} else {
					msgs = (await this.stores.messages.find({ conversation_id: conversationId, seq }, { sort: [after !== undefined ? "seq" : "-seq"], limit })) as MessageDoc[];
				}
				return this.hideReceiptsFor(ctx, await this.present(ctx, msgs), me.id);
			},
		},

		search: {
			rest: "GET /messages/search",
			socket: { namespace: "/chat", event: "message:search" },
			openapi: {
				operationId: "searchMessages",
				tag: "Messages",
				summary:
					"Search the text of the caller's messages (case-insensitive), in one conversation or in all of the caller's; answers the newest matches and how many there are in all.",
				params: { query: "The text to find (literal, case-insensitive).", conversationId: "Only in this conversation (404 if the caller is not a member)." },
				responses: {
					200: ok("The newest matches, and how many there are in all.", {
						type: "object",
						required: ["messages", "total"],
						properties: {
							messages: arrayOf(schema("Message")),
							total: { type: "integer", minimum: 0, description: "How many messages match in all." },
						},
					}),
					404: ref("responses", "ConversationNotFound"),
				},
			},
			params: {
				$$strict: "remove",
				query: { type: "string", trim: true, min: 1, max: 200 },
				conversationId: { ...idRule, optional: true },
				limit: limitRule(20),
			},
			async handler(this: MessagesThis, ctx: Ctx<{ query: string; conversationId?: string; limit: number }>) {
				const me = userOf(ctx);
				let scopes: { conversationId: string; clearedSeq: number }[];
				if (ctx.params.conversationId) {
					const { membership } = await this.access(ctx, ctx.params.conversationId, me.id);
					scopes = [{ conversationId: ctx.params.conversationId, clearedSeq: membership.cleared_seq }];
				} else {
					scopes = await callAction(ctx, "conversations.idsOf", { userId: me.id });
				}
				if (scopes.length === 0) return { messages: [], total: 0 };
				// The caller's conversations as one indexed $in at the top: NeDB uses an index only for
				// top-level fields, so a top-level $or of one clause per conversation would test the
				// regex against every message on the server.
				const query: Record<string, unknown> = {
					conversation_id: { $in: scopes.map(s => s.conversationId) },
					deleted: false,
					type: { $ne: "system" },
					content: { $regex: new RegExp(escapeRegex(ctx.params.query), "i") },
				};
				// History a member cleared stays hidden from it.
				const cleared = scopes.filter(s => s.clearedSeq > 0);
				if (cleared.length > 0) {
					query.$or = [{ conversation_id: { $nin: cleared.map(s => s.conversationId) } }, ...cleared.map(s => ({ conversation_id: s.conversationId, seq: { $gt: s.clearedSeq } }))];
				}
				const [msgs, total] = await Promise.all([
					this.stores.messages.find(query, { sort: ["-created_at"], limit: ctx.params.limit }) as Promise<MessageDoc[]>,
					this.stores.messages.count(query),
				]);
				return { messages: await this.hideReceiptsFor(ctx, await this.present(ctx, msgs), me.id), total };
			},
		},

		react: {
			rest: "POST /messages/:messageId/reactions",
			socket: { namespace: "/chat", event: "message:react" },
			openapi: {
				operationId: "addReaction",
				tag: "Messages",
				summary: "React to a message with an emoji",
				description:
					"Any member who may send in the conversation now (as for `message:send`: not across a block in a private chat, not in a declined request), on any message it can see that is not deleted. " +
					"Reacting again with the same emoji changes nothing. At most 20 different emoji per message (a 21st is refused). " +
					"The participants get `message:reactions` (not those with a block with the reactor, either way, as for read receipts).",
				params: { messageId: "The message's id.", emoji: EMOJI_HELP },
				responses: {
					...errors(400),
					201: ok("The message, with its reactions as the caller sees them.", schema("Message")),
					403: errorResponse("`FORBIDDEN`: the caller may not send in this conversation now.", {
						blocked: errorExample(403, "FORBIDDEN", "You cannot message this user"),
						declined: errorExample(403, "FORBIDDEN", "This message request was declined"),
					}),
					404: MESSAGE_NOT_FOUND,
					409: errorResponse("`CONFLICT`: the message was deleted.", { deleted: errorExample(409, "CONFLICT", "A deleted message cannot get reactions") }),
				},
			},
			params: { $$strict: "remove", messageId: idRule, emoji: emojiRule },
			async handler(this: MessagesThis, ctx: Ctx<{ messageId: string; emoji: string }>) {
				const me = userOf(ctx);
				const emoji = normalizeEmoji(ctx.params.emoji);
				const { msg, conv } = await this.loadOwnMessage(ctx, ctx.params.messageId, me.id);
				if (msg.deleted) throw appError("CONFLICT", "A deleted message cannot get reactions");
				// A reaction says something: who may not send here now (a block in a private chat, a
				// declined or still pending request) may not react either. Taking one back is always allowed.
				await callAction(ctx, "conversations.authorizeSend", { conversationId: conv._id, senderId: me.id });
				const key = reactionKey(msg._id, me.id, emoji);
				// Reactions to one message are stored one at a time in this process (insert, read, maybe
				// take back), so of new emoji racing for the 20th place exactly one gets it here.
				const { added, rows } = await this.withLock(`r:${msg._id}`, async () => {
					// One insert: the unique key makes a repeat (or a double click on two devices) a no-op.
					let inserted = true;
					try {
						await this.stores.reactions.insert({ message_id: msg._id, conversation_id: msg.conversation_id, user_id: me.id, emoji, reaction_key: key, created_at: new Date() });
					} catch (err) {
						if (!isDuplicateKeyError(err)) throw err;
						inserted = false;
					}
					const stored = (await this.stores.reactions.find({ message_id: msg._id })) as ReactionRow[];
					// The limit is checked after the insert, against what is stored (other nodes' too).
					if (inserted && pastTheLimit(stored, emoji, key)) {
						await this.stores.reactions.removeMany({ reaction_key: key });
						const message = `A message has at most ${MAX_DISTINCT_EMOJI} different reactions`;
						throw validationError(message, [{ field: "emoji", type: "reactionLimit", message }]);
					}
					return { added: inserted, rows: stored };
				});
				if (added) await this.pushReactions(ctx, msg, me.id, rows);
				ctx.meta.$statusCode = 201;
				const [presented] = await this.present(ctx, [msg], { rows: new Map([[msg._id, rows]]) });
				return presented;
			},
		},

		unreact: {
			rest: "DELETE /messages/:messageId/reactions/:emoji",
			socket: { namespace: "/chat", event: "message:unreact" },
			openapi: {
				operationId: "removeReaction",
				tag: "Messages",
				summary: "Take back the caller's reaction",
				description: "Removing a reaction the caller does not have changes nothing and answers the message. The participants get `message:reactions` when it changed.",
				params: { messageId: "The message's id.", emoji: `${EMOJI_HELP} In the path, URL-encoded.` },
				responses: {
					...errors(400),
					200: ok("The message, with its reactions as the caller sees them.", schema("Message")),
					404: MESSAGE_NOT_FOUND,
				},
			},
			params: { $$strict: "remove", messageId: idRule, emoji: emojiRule },
			async handler(this: MessagesThis, ctx: Ctx<{ messageId: string; emoji: string }>) {
				const me = userOf(ctx);
				const emoji = normalizeEmoji(ctx.params.emoji);
				const { msg } = await this.loadOwnMessage(ctx, ctx.params.messageId, me.id);
				const removed = await this.stores.reactions.removeMany({ reaction_key: reactionKey(msg._id, me.id, emoji) });
				const rows = (await this.stores.reactions.find({ message_id: msg._id })) as ReactionRow[];
				if (removed > 0 && !msg.deleted) await this.pushReactions(ctx, msg, me.id, rows);
				const [presented] = await this.present(ctx, [msg], { rows: new Map([[msg._id, rows]]) });
				return presented;
			},
		},

		pin: {
			rest: "POST /messages/:messageId/pin",
			socket: { namespace: "/chat", event: "message:pin" },
			openapi: {
				operationId: "pinMessage",
				tag: "Messages",
				summary: "Pin a message in its conversation",
				description:
					"In a private chat either party may pin (while it may send there: not across a block, not in a declined request); in a group its admin or a moderator. At most 50 pinned messages per conversation. Pinning a pinned message changes nothing. " +
					"The participants get `message:pinned`, then a `system` message (`system_data.event` `message_pinned`, `system_data.messageId` the pinned message).",
				params: { messageId: "The message's id." },
				responses: {
					200: ok("The pinned message.", schema("Message")),
					403: errorResponse("`FORBIDDEN`: in a group, only its admin and moderators pin; in a private chat, not across a block or in a declined request.", {
						member: errorExample(403, "FORBIDDEN", "Only the group's admin or a moderator pins messages"),
						blocked: errorExample(403, "FORBIDDEN", "You cannot message this user"),
					}),
					404: MESSAGE_NOT_FOUND,
					409: errorResponse("`CONFLICT`: the conversation has 50 pinned messages already, or the message is deleted or a system message.", {
						full: errorExample(409, "CONFLICT", "A conversation has at most 50 pinned messages"),
						deleted: errorExample(409, "CONFLICT", "A deleted message cannot be pinned"),
					}),
				},
			},
			params: { $$strict: "remove", messageId: idRule },
			async handler(this: MessagesThis, ctx: Ctx<{ messageId: string }>) {
				const me = userOf(ctx);
				const { msg, conv } = await this.loadOwnMessage(ctx, ctx.params.messageId, me.id);
				if (!this.mayPin(conv, me.id)) throw forbidden("Only the group's admin or a moderator pins messages");
				if (msg.deleted) throw appError("CONFLICT", "A deleted message cannot be pinned");
				if (msg.type === "system") throw appError("CONFLICT", "A system message cannot be pinned");
				if (msg.pinned_in) return (await this.present(ctx, [msg]))[0];
				// It writes a system message: only who may send here now.
				await callAction(ctx, "conversations.authorizeSend", { conversationId: conv._id, senderId: me.id });
				const full = () => appError("CONFLICT", `A conversation has at most ${MAX_PINS} pinned messages`);
				// Pins of one conversation run one at a time in this process: count, pin, count again.
				// (A check by pin time alone let a 51st through: a pin stamped earlier but stored later
				// than one that had already counted 50.)
				const { changed, fresh } = await this.withLock(`pins:${conv._id}`, async () => {
					if ((await this.stores.messages.count({ pinned_in: conv._id })) >= MAX_PINS) throw full();
					const now = new Date();
					const pinned = await this.withLock(`m:${msg._id}`, async () => {
						const n = await this.stores.messages.updateMany({ _id: msg._id, deleted: false, pinned_in: { $exists: false } }, { $set: { pinned_in: conv._id, pinned_at: now, pinned_by: me.id } });
						return { changed: n, fresh: (await this.stores.messages.findById(msg._id)) as MessageDoc | null };
					});
					// Pins racing on another node are counted again once stored: those past the 50th (by
					// time) are taken back. Only when over the limit is the list read.
					if (pinned.changed > 0 && (await this.stores.messages.count({ pinned_in: conv._id })) > MAX_PINS) {
						const pins = (await this.stores.messages.find({ pinned_in: conv._id }, { sort: ["pinned_at", "_id"] })) as MessageDoc[];
						if (pins.findIndex(m => m._id === msg._id) >= MAX_PINS) {
							await this.withLock(`m:${msg._id}`, () => this.stores.messages.updateMany({ _id: msg._id, pinned_by: me.id, pinned_at: now }, { $unset: { pinned_in: true, pinned_at: true, pinned_by: true } }));
							throw full();
						}
					}
					return pinned;
				});
				if (!fresh || fresh.deleted) throw appError("CONFLICT", "A deleted message cannot be pinned");
				// Pinned by someone else a moment ago: the same result.
				if (changed === 0) return (await this.present(ctx, [fresh]))[0];
				await this.push(ctx, [{ rooms: conv.participants.map(userRoom), event: "message:pinned", payload: { conversationId: conv._id, messageId: msg._id, userId: me.id } }]);
				await this.writeSystem(ctx, { conversationId: conv._id, event: "message_pinned", userId: msg.sender_id, actorId: me.id, messageId: msg._id });
				return (await this.present(ctx, [fresh]))[0];
			},
		},

		unpin: {
			rest: "DELETE /messages/:messageId/pin",
			socket: { namespace: "/chat", event: "message:unpin" },
			openapi: {
				operationId: "unpinMessage",
				tag: "Messages",
				summary: "Unpin a message",
				description: "The same people as for pinning. Unpinning a message that is not pinned changes nothing. The participants get `message:unpinned`.",
				params: { messageId: "The message's id." },
				responses: {
					200: ok("The message, no longer pinned.", schema("Message")),
					403: errorResponse("`FORBIDDEN`: in a group, only its admin and moderators unpin.", { member: errorExample(403, "FORBIDDEN", "Only the group's admin or a moderator unpins messages") }),
					404: MESSAGE_NOT_FOUND,
				},
			},
			params: { $$strict: "remove", messageId: idRule },
			async handler(this: MessagesThis, ctx: Ctx<{ messageId: string }>) {
				const me = userOf(ctx);
				const { msg, conv } = await this.loadOwnMessage(ctx, ctx.params.messageId, me.id);
				if (!this.mayPin(conv, me.id)) throw forbidden("Only the group's admin or a moderator unpins messages");
				if (!msg.pinned_in) return (await this.present(ctx, [msg]))[0];
				const { changed, fresh } = await this.withLock(`m:${msg._id}`, async () => {
					const n = await this.stores.messages.updateMany({ _id: msg._id, pinned_in: { $exists: true } }, { $unset: { pinned_in: true, pinned_at: true, pinned_by: true } });
					return { changed: n, fresh: ((await this.stores.messages.findById(msg._id)) as MessageDoc | null) ?? msg };
				});
				if (changed > 0) {
					await this.push(ctx, [{ rooms: conv.participants.map(userRoom), event: "message:unpinned", payload: { conversationId: conv._id, messageId: msg._id, userId: me.id } }]);
				}
				return (await this.present(ctx, [fresh]))[0];
			},
		},

		pins: {
			rest: "GET /conversations/:conversationId/pins",
			socket: { namespace: "/chat", event: "conversation:pins" },
			member: "conversationId",
			openapi: {
				operationId: "listPins",
				tag: "Messages",
				summary: "A conversation's pinned messages, most recently pinned first",
				description: "At most 50. Messages before the caller cleared its history are not shown.",
				params: { conversationId: "The conversation's id. A conversation the caller is not a member of answers 404, like one that does not exist." },
				responses: {
					...errors(400),
					404: ref("responses", "ConversationNotFound"),
					200: ok("The pinned messages.", arrayOf(schema("Message"))),
				},
			},
			params: { $$strict: "remove", conversationId: idRule },
			async handler(this: MessagesThis, ctx: Ctx<{ conversationId: string }>) {
				const me = userOf(ctx);
				const { membership } = memberOf(ctx);
				const pins = (await this.stores.messages.find({ pinned_in: ctx.params.conversationId }, { sort: ["-pinned_at", "-_id"], limit: MAX_PINS })) as MessageDoc[];
				const visible = pins.filter(m => !m.deleted && m.seq > membership.cleared_seq);
				return this.hideReceiptsFor(ctx, await this.present(ctx, visible), me.id);
			},
		},

		// ---- for the conversations service (not routed by the gateway) ----

		createSystem: {
			visibility: "public",
			params: { conversationId: idRule, event: "string", userId: { ...userIdRule, nullable: true, optional: true }, actorId: userIdRule, messageId: { ...idRule, optional: true } },
			async handler(this: MessagesThis, ctx: Ctx<{ conversationId: string; event: string; userId?: number | null; actorId: number; messageId?: string }>) {
				const { conversationId, event, actorId, messageId } = ctx.params;
				return this.writeSystem(ctx, { conversationId, event, userId: ctx.params.userId ?? null, actorId, messageId });
			},
		},

		/** A deleted group's messages go, and then the files attached to them (unless used elsewhere). */
		purgeConversation: {
			visibility: "public",
			params: { conversationId: idRule },
			async handler(this: MessagesThis, ctx: Ctx<{ conversationId: string }>) {
				const conversationId = ctx.params.conversationId;
				this.heads.delete(conversationId);
				// Only image and file messages carry attachments; read in pages, by seq.
				const attachments: string[] = [];
				for (let after = 0; ; ) {
					const page = (await this.stores.messages.find({ conversation_id: conversationId, type: { $in: ["image", "file"] }, deleted: false, seq: { $gt: after } }, { sort: ["seq"], limit: 500 })) as MessageDoc[];
					for (const m of page) attachments.push(...(m.attachments ?? []));
					if (page.length < 500) break;
					after = page[page.length - 1].seq;
				}
				const [removed] = await Promise.all([this.stores.messages.removeMany({ conversation_id: conversationId }), this.stores.reactions.removeMany({ conversation_id: conversationId })]);
				this.releaseFiles(ctx, attachments);
				return removed;
			},
		},

		/** Which of these files are attached to a message not deleted (the files service asks before deleting one). */
		fileRefs: {
			visibility: "public",
			params: { fileIds: fileIdsRule },
			async handler(this: MessagesThis, ctx: Ctx<{ fileIds: string[] }>) {
				const wanted = new Set(ctx.params.fileIds);
				if (wanted.size === 0) return [];
				const rows = (await this.stores.messages.find({ attachments: { $in: [...wanted].map(filePath) }, deleted: false })) as MessageDoc[];
				const used = new Set<string>();
				for (const m of rows) for (const ref of m.attachments) {
					const id = fileIdOfPath(ref);
					if (id && wanted.has(id)) used.add(id);
				}
				return [...used];
			},
		},
	},

	events: {
		[EVENTS.userUpdated](this: MessagesThis, ctx: Context<BroadcastPayloads[typeof EVENTS.userUpdated]>) {
			this.profiles.delete(ctx.params.userId);
		},
		[EVENTS.userDeleted](this: MessagesThis, ctx: Context<BroadcastPayloads[typeof EVENTS.userDeleted]>) {
			this.profiles.delete(ctx.params.userId);
		},
	},

	methods: {
		async access(this: MessagesThis, ctx: Ctx<unknown>, conversationId: string, userId: number) {
			return callAction(ctx, "conversations.access", { conversationId, userId });
		},

		/** A message of a conversation the user belongs to; not found otherwise (nothing leaks). */
		async loadOwnMessage(this: MessagesThis, ctx: Ctx<unknown>, messageId: string, userId: number) {
			const msg = (await this.stores.messages.findById(messageId)) as MessageDoc | null;
			if (!msg) throw notFound("Message");
			// An outsider gets the same answer for a real message as for a made-up id.
			const { conv, membership } = await this.access(ctx, msg.conversation_id, userId).catch((err: { type?: string }) => {
				throw err?.type === "NOT_FOUND" ? notFound("Message") : err;
			});
			if (msg.seq <= membership.cleared_seq) throw notFound("Message");
			return { msg, conv };
		},

		/**
		 * Work on one key runs one at a time in this process: sends to one conversation (no seq is
		 * wasted by a local race), writes to one message (`m:<id>`, see the header).
		 */
		withLock<T>(this: MessagesThis, key: string, fn: () => Promise<T>): Promise<T> {
			return this.withLocks([key], fn);
		},

		/** fn after all work queued on these keys, and before any queued on them later. */
		withLocks<T>(this: MessagesThis, keys: string[], fn: () => Promise<T>): Promise<T> {
			return this.locks.run(keys, fn);
		},

		/**
		 * `message:reactions` with the message's reactions now (rows), after reactorId changed them.
		 * Like a receipt, a reaction says the reactor is here: not to anyone with a block with it.
		 */
		async pushReactions(this: MessagesThis, ctx: Ctx<unknown>, msg: MessageDoc, reactorId: number, rows: ReactionRow[]) {
			const rooms = (await this.audience(ctx, msg.conversation_id, reactorId, true)).map(userRoom);
			await this.push(ctx, [{ rooms, event: "message:reactions", payload: { conversationId: msg.conversation_id, messageId: msg._id, reactions: summarize(rows).summary } }]);
		},

		/** Who hears of userId's action (see conversations.audience). */
		async audience(this: MessagesThis, ctx: Ctx<unknown>, conversationId: string, userId: number, either: boolean) {
			return callAction(ctx, "conversations.audience", { conversationId, userId, either });
		},

		/** Receipts in history are receipts too: a reader with a block with the viewer, either way, is left out. */
		async hideReceiptsFor(this: MessagesThis, ctx: Ctx<unknown>, msgs: ReturnType<typeof presentMessage>[], viewerId: number) {
			const readers = [...new Set(msgs.flatMap(m => [...m.seen_by, ...m.delivered_to]))].filter(id => id !== viewerId);
			if (readers.length === 0) return msgs;
			const hidden = new Set<number>();
			for (let i = 0; i < readers.length; i += 1000) {
				const ids = await callAction(ctx, "conversations.blockRelations", { userId: viewerId, others: readers.slice(i, i + 1000) });
				for (const id of ids) hidden.add(id);
			}
			if (hidden.size === 0) return msgs;
			return msgs.map(m => ({ ...m, seen_by: m.seen_by.filter(id => !hidden.has(id)), delivered_to: m.delivered_to.filter(id => !hidden.has(id)) }));
		},

		/** Files no longer attached here; the files service deletes those nobody uses. Never fails the caller. */
		releaseFiles(this: MessagesThis, ctx: Ctx<unknown>, refs: string[]) {
			const fileIds = [...new Set(refs.map(fileIdOfPath).filter((id): id is string => !!id))];
			// files.release takes at most 1000 at once.
			for (let i = 0; i < fileIds.length; i += 1000) {
				const chunk = fileIds.slice(i, i + 1000);
				this.inBackground("files.release", () =>
					callAction(ctx, "files.release", { fileIds: chunk }).catch(err => this.logger.warn(`Could not release ${chunk.length} file(s)`, (err as Error).message)),
				);
			}
		},

		async maxSeq(this: MessagesThis, conversationId: string) {
			const [last] = (await this.stores.messages.find({ conversation_id: conversationId }, { sort: ["-seq"], limit: 1 })) as MessageDoc[];
			return last?.seq ?? 0;
		},

		async insertWithSeq(this: MessagesThis, conversationId: string, doc) {
			return this.withLock(conversationId, async () => {
				for (let attempt = 0; attempt < 25; attempt++) {
					const last = this.heads.get(conversationId) ?? (await this.maxSeq(conversationId));
					const seq = last + 1;
					try {
						const msg = (await this.stores.messages.insert({ ...doc, seq, seq_key: `${conversationId}:${seq}` })) as MessageDoc;
						if (this.heads.size >= MAX_CACHED_HEADS) this.heads.delete(this.heads.keys().next().value as string);
						this.heads.set(conversationId, seq);
						return { msg, created: true };
					} catch (err) {
						if (!isDuplicateKeyError(err)) throw err;
						// Either this clientId was stored meanwhile (a concurrent retry) ...
						const existing = (await this.stores.messages.findOne({ dedupe_key: doc.dedupe_key })) as MessageDoc | null;
						if (existing) return { msg: existing, created: false };
						// ... or another node took this seq: read the head again and take the next.
						this.heads.delete(conversationId);
					}
				}
				throw appError("SERVICE_UNAVAILABLE", "The conversation is too busy, try again");
			});
		},

		/** Sender names and avatars, cached for a minute (dropped when the user changes). */
		async senderProfiles(this: MessagesThis, caller: Caller, ids: number[]) {
			const out = new Map<number, SenderProfile>();
			const now = Date.now();
			const missing: number[] = [];
			for (const id of new Set(ids)) {
				const hit = this.profiles.get(id);
				if (hit && hit.until > now) out.set(id, hit.profile);
				else missing.push(id);
			}
			if (missing.length > 0) {
				try {
					const users = await callAction(caller, "users.resolve", { ids: missing });
					for (const u of users) {
						const profile = { id: u.id, name: u.username, avatar_url: u.avatar_url };
						this.profiles.set(u.id, { profile, until: now + PROFILE_TTL_MS });
						out.set(u.id, profile);
					}
				} catch (err) {
					// Names are decoration: a message still goes out while the users service is away.
					this.logger.warn("Sender profiles unavailable", (err as Error).message);
				}
			}
			return out;
		},

		async present(this: MessagesThis, ctx: Ctx<unknown>, msgs: MessageDoc[], options: PresentOptions = {}) {
			const viewer = options.viewer === undefined ? (ctx.meta.user?.id ?? null) : options.viewer;
			const [profiles, rows] = await Promise.all([
				this.senderProfiles(ctx, msgs.map(m => m.sender_id)),
				options.rows === undefined ? this.reactionsOf(msgs) : Promise.resolve(options.rows ?? new Map<string, ReactionRow[]>()),
			]);
			return msgs.map(m => presentMessage(m, profiles.get(m.sender_id) ?? null, forViewer(rows.get(m._id) ?? [], viewer)));
		},

		/** The reactions of these messages (those not deleted), by message: one query for a whole page. */
		async reactionsOf(this: MessagesThis, msgs: MessageDoc[]) {
			const ids = msgs.filter(m => !m.deleted).map(m => m._id);
			if (ids.length === 0) return new Map<string, ReactionRow[]>();
			return groupByMessage((await this.stores.reactions.find({ message_id: { $in: ids } })) as ReactionRow[]);
		},

		/**
		 * What a reply to `messageId` quotes. The original must be a message of this conversation that
		 * the sender can see (not before its cleared history) and not deleted; every other case is
		 * the same refusal, so a message elsewhere never shows it exists.
		 */
		async replyTarget(this: MessagesThis, ctx: Ctx<unknown>, conversationId: string, userId: number, messageId: string) {
			const refuse = (message: string) => validationError(message, [{ field: "replyTo", type: "replyTo", message }]);
			const [original, access] = await Promise.all([this.stores.messages.findById(messageId) as Promise<MessageDoc | null>, this.access(ctx, conversationId, userId)]);
			if (!original || original.conversation_id !== conversationId || original.seq <= access.membership.cleared_seq) {
				throw refuse("The message replied to is not in this conversation");
			}
			if (original.deleted) throw refuse("The message replied to was deleted");
			return { id: original._id, seq: original.seq, sender_id: original.sender_id, excerpt: excerptOf(original.content) };
		},

		/** The excerpt the replies to `rootId` quote: its new text after an edit, null once it is deleted. */
		async setReplyExcerpts(this: MessagesThis, rootId: string, excerpt: string | null) {
			// Each reply written under its own lock, as every write of a message is (FerretDB 1.x
			// rewrites whole documents: beside a batched outbox-flag write, one of the two was lost).
			const replies = (await this.stores.messages.find({ "reply_to.id": rootId, "reply_to.excerpt": { $ne: null } })) as MessageDoc[];
			if (replies.length === 0) return;
			const ids = replies.map(r => r._id);
			await this.withLocks(
				ids.map(id => `m:${id}`),
				() => this.stores.messages.updateMany({ _id: { $in: ids }, "reply_to.excerpt": { $ne: null } }, { $set: { "reply_to.excerpt": excerpt } }),
			);
		},

		/**
		 * A message's reply_count, recounted and set (never incremented: a count is right whatever
		 * else ran, on any node), then counted again until two counts agree, so that of two replies
		 * stored at once on two nodes the last write is the full count. Its participants get
		 * message:updated. A reply stored just as its original was deleted loses its excerpt here.
		 */
		async refreshReplyCount(this: MessagesThis, ctx: Ctx<unknown>, rootId: string) {
			const replies = { "reply_to.id": rootId, deleted: false };
			const root = await this.withLock(`m:${rootId}`, async () => {
				let count = await this.stores.messages.count(replies);
				let updated: MessageDoc | null = null;
				for (let attempt = 0; attempt < 5; attempt++) {
					updated = (await this.stores.messages.updateById(rootId, { $set: { reply_count: count } })) as MessageDoc | null;
					if (!updated) return null;
					const again = await this.stores.messages.count(replies);
					if (again === count) break;
					count = again;
				}
				return updated;
			});
			if (!root) return;
			if (root.deleted) {
				await this.setReplyExcerpts(rootId, null);
				return;
			}
			// As for an edit: who blocked the root's sender never got it live, and is not told it changed.
			const [rooms, [payload]] = await Promise.all([this.audience(ctx, root.conversation_id, root.sender_id, false), this.present(ctx, [root], { viewer: null })]);
			await this.push(ctx, [{ rooms: rooms.map(userRoom), event: "message:updated", payload }]);
		},

		/** The members `content` mentions (lib/mentions.ts); their usernames come from the profile cache. */
		async mentionsIn(this: MessagesThis, caller: Caller, content: string, senderId: number, conv: Pick<ConversationMeta["conv"], "type" | "participants" | "admin_id" | "moderator_ids">) {
			const profiles = await this.senderProfiles(caller, conv.participants);
			return parseMentions(content, {
				senderId,
				members: conv.participants.map(id => ({ id, username: profiles.get(id)?.name ?? "" })),
				isGroup: conv.type === "group",
				mayMentionAll: conv.admin_id === senderId || conv.moderator_ids.includes(senderId),
			});
		},

		/** Who pins and unpins: either party of a private chat; a group's admin and moderators. */
		mayPin(this: MessagesThis, conv: ConversationMeta["conv"], userId: number) {
			return conv.type === "private" ? conv.participants.includes(userId) : conv.admin_id === userId || conv.moderator_ids.includes(userId);
		},

		/** A system message (a group change, a pin): stored, the head moved, pushed to the participants. */
		async writeSystem(this: MessagesThis, ctx: Ctx<unknown>, { conversationId, event, userId, actorId, messageId }: { conversationId: string; event: string; userId: number | null; actorId: number; messageId?: string }) {
			const now = new Date();
			const { msg } = await this.insertWithSeq(conversationId, {
				conversation_id: conversationId,
				sender_id: actorId,
				type: "system",
				content: SYSTEM_TEXT[event] ?? event,
				attachments: [],
				client_id: null,
				dedupe_key: `${conversationId}:system:${crypto.randomUUID()}`,
				seen_by: [],
				delivered_to: [],
				edited_at: null,
				deleted: false,
				system_data: { event, userId, actorId, ...(messageId ? { messageId } : {}) },
				// No outbox flag: group changes notify through their own events.
				created_at: now,
				updated_at: now,
			});
			await this.record(ctx, msg);
			const participants = await callAction(ctx, "conversations.participantsOf", { conversationId });
			const [presented] = await this.present(ctx, [msg], { rows: null });
			await this.push(ctx, [{ rooms: participants.map(userRoom), event: "message:created", payload: presented }]);
			return presented;
		},

		/** The outbox backlog, the durable queues' depth and consumers, the dead letters: for the metrics. */
		async reportQueueMetrics(this: MessagesThis) {
			setMetric(this.broker, "parley_outbox_backlog", await this.stores.messages.count({ outbox: true }));
			const deadLetters = prefixed(DEAD_LETTER_QUEUE, this.broker.namespace);
			for (const q of await this.publisher.queueStats()) {
				if (q.queue === deadLetters) setMetric(this.broker, "parley_dead_letter_messages", q.messages);
				else {
					setMetric(this.broker, "parley_durable_queue_messages", q.messages, { queue: q.queue });
					setMetric(this.broker, "parley_durable_queue_consumers", q.consumers, { queue: q.queue });
				}
			}
		},

		/** message.created on the durable bus (one event per message), then the outbox flag. */
		async announce(this: MessagesThis, msg: MessageDoc, sender: SenderProfile, known?: KnownConversation) {
			// From a send: what authorizeSend said a moment ago. From the outbox sweep: asked now.
			// Mentioned members get a `mention` notification instead of the plain one (even when muted).
			const mentions = msg.mentions ?? [];
			const targets: NotificationTargets = known
				? notificationTargetsOf(known, msg.sender_id, known, mentions)
				: await callAction(this.broker, "conversations.notificationTargets", {
						conversationId: msg.conversation_id,
						senderId: msg.sender_id,
						...(mentions.length > 0 ? { mentions } : {}),
					});
			if (targets) {
				await this.publishEvent(CHANNELS.messageCreated, {
					eventId: msg._id,
					conversationId: msg.conversation_id,
					conversationType: targets.conversationType,
					conversationName: targets.conversationName,
					senderId: msg.sender_id,
					senderName: sender.name,
					senderAvatar: sender.avatar_url,
					content: msg.content.slice(0, 200),
					messageType: msg.type,
					recipients: targets.recipients,
				});
			}
			this.markNotified(msg._id);
		},

		/**
		 * Outbox flags are set in batches: one write for many messages, one write at a time, each
		 * batch waiting at least 250 ms and at least as long as the last write took. A slow store
		 * (FerretDB 1.x scans the whole collection for an update: 300 ms at 3,000 messages) so gets
		 * fewer, bigger writes instead of a pile of overlapping ones that holds up every send.
		 */
		markNotified(this: MessagesThis, messageId: string) {
			this.notifiedBatch.add(messageId);
			this.scheduleNotifiedFlush();
		},

		/** The next outbox-flag write, unless one is already due or running (it schedules the next itself). */
		scheduleNotifiedFlush(this: MessagesThis) {
			if (this.notifiedTimer || this.notifiedFlushing || this.notifiedStopping) return;
			this.notifiedTimer = setTimeout(() => this.inBackground("outbox flags", () => this.flushNotified()), this.notifiedDelayMs);
		},

		async flushNotified(this: MessagesThis) {
			this.notifiedTimer = null;
			const ids = [...this.notifiedBatch];
			this.notifiedBatch.clear();
			if (ids.length === 0) return;
			const started = Date.now();
			// If this write is lost (the node dies), the sweep publishes again: harmless, events are idempotent.
			// Queued behind edits and deletions of these messages, never beside them (see the header).
			const write = this.withLocks(
				ids.map(id => `m:${id}`),
				() => this.stores.messages.updateMany({ _id: { $in: ids } }, { $unset: { outbox: true } }),
			);
			this.notifiedFlushing = write.then(
				() => undefined,
				() => undefined,
			);
			try {
				await write;
			} finally {
				this.notifiedFlushing = null;
				this.notifiedDelayMs = Math.min(5_000, Math.max(250, Date.now() - started));
				if (this.notifiedBatch.size > 0) this.scheduleNotifiedFlush();
			}
		},

		/** Messages whose event did not make it to the bus (it was down, the node died): publish again. */
		async sweepOutbox(this: MessagesThis) {
			const stale = new Date(Date.now() - 15_000);
			const pending = (await this.stores.messages.find({ outbox: true, created_at: { $lt: stale } }, { sort: ["created_at"], limit: 100 })) as MessageDoc[];
			if (pending.length === 0) return;
			const profiles = await this.senderProfiles(this.broker, pending.map(m => m.sender_id));
			for (const msg of pending) {
				// A duplicate event is harmless: the consumer keeps one notification per (event, user).
				await this.announce(msg, profiles.get(msg.sender_id) ?? { id: msg.sender_id, name: "", avatar_url: null });
			}
		},

		async record(this: MessagesThis, ctx: Ctx<unknown>, msg: MessageDoc) {
			// The mentioned members' unread mentions are kept by the conversations service.
			const mentions = msg.mentions?.length ? { mentions: msg.mentions } : {};
			await ctx.call("conversations.recordMessage", { conversationId: msg.conversation_id, seq: msg.seq, senderId: msg.sender_id, lastMessage: lastMessageOf(msg), ...mentions });
		},
	},

	created(this: MessagesThis) {
		this.metricsTimer = null;
		this.heads = new Map();
		this.locks = new SerialWork();
		this.profiles = new Map();
		this.outboxTimer = null;
		this.notifiedBatch = new Set();
		this.notifiedTimer = null;
		this.notifiedFlushing = null;
		this.notifiedDelayMs = 250;
		this.notifiedStopping = false;
	},

	async started(this: MessagesThis) {
		// Messages stored before the outbox flag became a sparse field: their pending ones carry it now.
		await this.stores.messages.updateMany({ notified: false }, { $set: { outbox: true }, $unset: { notified: true } });
		this.outboxTimer = setInterval(() => {
			this.inBackground("outbox sweep", () => this.sweepOutbox());
		}, 10_000);
		this.outboxTimer.unref();
		if (this.broker.isMetricsEnabled()) {
			this.inBackground("queue metrics", () => this.reportQueueMetrics());
			this.metricsTimer = setInterval(() => this.inBackground("queue metrics", () => this.reportQueueMetrics()), METRICS_INTERVAL_MS);
			this.metricsTimer.unref();
		}
	},

	async stopped(this: MessagesThis) {
		if (this.outboxTimer) clearInterval(this.outboxTimer);
		if (this.metricsTimer) clearInterval(this.metricsTimer);
		this.notifiedStopping = true;
		if (this.notifiedTimer) clearTimeout(this.notifiedTimer);
		await this.notifiedFlushing;
		await this.flushNotified().catch(() => undefined);
	},
};

export default MessagesService;
