-- Schema version 6: the media type each saved file was served with, so that the dashboard
-- serves it with that Content-Type (never one guessed from the request). Files saved before
-- it get the type of their name's extension, as the downloader chose that extension.
ALTER TABLE files ADD COLUMN content_type TEXT;
UPDATE files SET content_type = CASE
    WHEN path LIKE '%.png' THEN 'image/png'
    WHEN path LIKE '%.jpg' OR path LIKE '%.jpeg' THEN 'image/jpeg'
    WHEN path LIKE '%.webp' THEN 'image/webp'
    WHEN path LIKE '%.gif' THEN 'image/gif'
    WHEN path LIKE '%.mp4' THEN 'video/mp4'
    WHEN path LIKE '%.webm' THEN 'video/webm'
    WHEN path LIKE '%.mov' THEN 'video/quicktime'
    WHEN path LIKE '%.mp3' THEN 'audio/mpeg'
    WHEN path LIKE '%.wav' THEN 'audio/wav'
END;
