/**
 * File ids and the references to them, defined once. A file id is 16 random bytes in lower-case
 * hex, made by the files service; `/files/<id>` is how chats, avatars and attachments refer to a
 * file of this server. Every pattern below, the validators' and the API document's, is built from
 * FILE_ID_SOURCE.
 */
import crypto from "node:crypto";

/** The id itself, as a regular-expression source (no anchors). */
export const FILE_ID_SOURCE = "[a-f0-9]{32}";

export function newFileId(): string {
	return crypto.randomBytes(16).toString("hex");
}

export const FILE_ID_PATTERN = new RegExp(`^${FILE_ID_SOURCE}$`);
/** The one form of a file of this server that chats and profiles store; the id is group 1. */
export const FILE_PATH_PATTERN = new RegExp(`^/files/(${FILE_ID_SOURCE})$`);
/** An attachment as a client may send it: the id, `/files/<id>`, or a full URL ending in `/files/<id>`. */
export const ATTACHMENT_PATTERN = new RegExp(`^(?:https?://\\S+)?(?:/files/)?${FILE_ID_SOURCE}$`);
/** The id at the end of a reference (an id, a path, a URL; its query or fragment ignored); group 1. */
export const FILE_REF_PATTERN = new RegExp(`(?:^|/files/)(${FILE_ID_SOURCE})(?:[?#].*)?$`);

export const filePath = (fileId: string) => `/files/${fileId}`;

/** The file id of a stored `/files/<id>` reference; null for anything else (e.g. an old external URL). */
export function fileIdOfPath(ref: string | null | undefined): string | null {
	const match = ref ? FILE_PATH_PATTERN.exec(ref) : null;
	return match ? match[1] : null;
}

/** The files service is asked about at most this many ids at once (files.release, fileRefs). */
export const fileIdsRule = { type: "array", max: 1000, items: { type: "string", pattern: FILE_ID_PATTERN.source } } as const;
