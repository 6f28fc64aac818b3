/**
 * What a file is, decided from its first bytes (not from the client's name or claimed type),
 * against the allow-list: images, video, audio, PDF, office documents, plain text, archives.
 * SVG and HTML are not on it: served from our origin they could run script.
 */
export type FileKind = "image" | "video" | "audio" | "document";

export interface DetectedType {
	mime: string;
	kind: FileKind;
}

/** Every type detectType can answer: the allow-list, as the API documents show it. */
export const ACCEPTED_MIME_TYPES = [
	"image/png",
	"image/jpeg",
	"image/gif",
	"image/webp",
	"video/mp4",
	"video/quicktime",
	"video/webm",
	"audio/mpeg",
	"audio/mp4",
	"audio/ogg",
	"audio/wav",
	"audio/flac",
	"audio/webm",
	"application/pdf",
	"application/vnd.openxmlformats-officedocument.wordprocessingml.document",
	"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
	"application/vnd.openxmlformats-officedocument.presentationml.presentation",
	"application/vnd.oasis.opendocument.text",
	"application/vnd.oasis.opendocument.spreadsheet",
	"application/vnd.oasis.opendocument.presentation",
	"application/msword",
	"application/vnd.ms-excel",
	"application/vnd.ms-powerpoint",
	"text/plain",
	"text/csv",
	"text/markdown",
	"application/zip",
	"application/gzip",
	"application/x-7z-compressed",
	"application/vnd.rar",
] as const;

/** Bytes needed to decide. */
export const SNIFF_BYTES = 4100;

const startsWith = (buf: Buffer, bytes: number[], offset = 0) => bytes.every((b, i) => buf[offset + i] === b);
const ascii = (buf: Buffer, start: number, end: number) => buf.subarray(start, end).toString("latin1");
const extensionOf = (name: string) => (/\.([A-Za-z0-9]{1,8})$/.exec(name)?.[1] ?? "").toLowerCase();

const OOXML: Record<string, string> = {
	docx: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
	xlsx: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
	pptx: "application/vnd.openxmlformats-officedocument.presentationml.presentation",
	odt: "application/vnd.oasis.opendocument.text",
	ods: "application/vnd.oasis.opendocument.spreadsheet",
	odp: "application/vnd.oasis.opendocument.presentation",
};
const LEGACY_OFFICE: Record<string, string> = { doc: "application/msword", xls: "application/vnd.ms-excel", ppt: "application/vnd.ms-powerpoint" };

function isText(buf: Buffer): boolean {
	if (buf.length === 0) return false;
	if (buf.includes(0)) return false;
	// Valid UTF-8 (a multi-byte character cut at the end of the sample is fine).
	try {
		new TextDecoder("utf-8", { fatal: true }).decode(buf.subarray(0, Math.max(0, buf.length - 4)));
		return true;
	} catch {
		return false;
	}
}

/** The type of a file from its first bytes; null when it is not one we accept. */
export function detectType(head: Buffer, fileName = ""): DetectedType | null {
	const ext = extensionOf(fileName);
	if (startsWith(head, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return { mime: "image/png", kind: "image" };
	if (startsWith(head, [0xff, 0xd8, 0xff])) return { mime: "image/jpeg", kind: "image" };
	if (ascii(head, 0, 6) === "GIF87a" || ascii(head, 0, 6) === "GIF89a") return { mime: "image/gif", kind: "image" };
	if (ascii(head, 0, 4) === "RIFF" && ascii(head, 8, 12) === "WEBP") return { mime: "image/webp", kind: "image" };
	if (ascii(head, 0, 4) === "RIFF" && ascii(head, 8, 12) === "WAVE") return { mime: "audio/wav", kind: "audio" };
	if (ascii(head, 4, 8) === "ftyp") {
		const brand = ascii(head, 8, 12);
		if (brand.startsWith("M4A")) return { mime: "audio/mp4", kind: "audio" };
		if (brand === "qt  ") return { mime: "video/quicktime", kind: "video" };
		return { mime: "video/mp4", kind: "video" };
	}
	if (startsWith(head, [0x1a, 0x45, 0xdf, 0xa3])) return ext === "weba" ? { mime: "audio/webm", kind: "audio" } : { mime: "video/webm", kind: "video" };
	if (ascii(head, 0, 4) === "OggS") return { mime: "audio/ogg", kind: "audio" };
	if (ascii(head, 0, 4) === "fLaC") return { mime: "audio/flac", kind: "audio" };
	if (ascii(head, 0, 3) === "ID3" || (head[0] === 0xff && (head[1] & 0xe0) === 0xe0 && ext === "mp3")) return { mime: "audio/mpeg", kind: "audio" };
	if (ascii(head, 0, 5) === "%PDF-") return { mime: "application/pdf", kind: "document" };
	if (startsWith(head, [0x50, 0x4b, 0x03, 0x04]) || startsWith(head, [0x50, 0x4b, 0x05, 0x06])) {
		return { mime: OOXML[ext] ?? "application/zip", kind: "document" };
	}
	if (startsWith(head, [0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1])) return LEGACY_OFFICE[ext] ? { mime: LEGACY_OFFICE[ext], kind: "document" } : null;
	if (startsWith(head, [0x1f, 0x8b])) return { mime: "application/gzip", kind: "document" };
	if (startsWith(head, [0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c])) return { mime: "application/x-7z-compressed", kind: "document" };
	if (ascii(head, 0, 6) === "Rar!\x1a\x07") return { mime: "application/vnd.rar", kind: "document" };
	if (isText(head)) {
		// Markup that a browser would render as a page is refused, whatever its extension says.
		const start = head.subarray(0, 512).toString("utf8").trimStart().toLowerCase();
		if (start.startsWith("<!doctype html") || start.startsWith("<html") || start.startsWith("<svg") || (start.startsWith("<?xml") && start.includes("<svg"))) return null;
		return { mime: ext === "csv" ? "text/csv" : ext === "md" ? "text/markdown" : "text/plain", kind: "document" };
	}
	return null;
}

/**
 * A display name from the client's: path parts, control characters and the invisible
 * direction marks that make "photo\u202egnp.zip" look like "photopiz.png" removed, length bounded.
 */
export function cleanFileName(name: unknown): string {
	const base = String(name ?? "")
		.split(/[\\/]/)
		.pop() as string;
	const cleaned = base
		// eslint-disable-next-line no-control-regex
		.replace(/[\u0000-\u001f\u007f-\u009f"\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]/g, "")
		.replace(/^\.+/, "")
		.trim();
	return (cleaned || "file").slice(0, 200);
}

/**
 * Extensions a download may keep for each type we store; the first is the one added otherwise.
 * Text is stored whatever it contains, so only extensions that nothing executes or renders
 * as a page are kept: "notes.html" or "run.js" with text in it downloads as "notes.html.txt".
 */
const EXTENSIONS: Record<string, string[]> = {
	"image/png": ["png"],
	"image/jpeg": ["jpg", "jpeg", "jpe", "jfif"],
	"image/gif": ["gif"],
	"image/webp": ["webp"],
	"audio/wav": ["wav"],
	"audio/mp4": ["m4a", "m4b", "mp4", "aac"],
	"video/quicktime": ["mov", "qt"],
	"video/mp4": ["mp4", "m4v", "3gp", "3g2", "mov"],
	"video/webm": ["webm", "mkv"],
	"audio/webm": ["weba", "webm"],
	"audio/ogg": ["ogg", "oga", "opus", "ogv"],
	"audio/flac": ["flac"],
	"audio/mpeg": ["mp3"],
	"application/pdf": ["pdf"],
	"application/zip": ["zip"],
	"application/gzip": ["gz", "tgz"],
	"application/x-7z-compressed": ["7z"],
	"application/vnd.rar": ["rar"],
	"text/plain": ["txt", "text", "log", "markdown", "json", "yaml", "yml", "toml", "ini", "conf", "cfg", "tsv"],
	"text/csv": ["csv"],
	"text/markdown": ["md"],
};
for (const [ext, mime] of Object.entries({ ...OOXML, ...LEGACY_OFFICE })) EXTENSIONS[mime] = [ext];

/**
 * The name a file is stored and downloaded under: the client's, with the extension of what the
 * bytes are when the client's extension says something else. A saved download is opened by its
 * extension, so "invoice.pdf.exe", "page.html" or "app.jar" must not come out of a PDF, a text or
 * a zip that we checked as such.
 */
export function storedFileName(cleanName: string, type: DetectedType): string {
	const allowed = EXTENSIONS[type.mime];
	if (!allowed || allowed.includes(extensionOf(cleanName))) return cleanName;
	const suffix = `.${allowed[0]}`;
	return cleanName.slice(0, 200 - suffix.length) + suffix;
}
