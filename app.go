package ferry

import "time"

// Application groups the servers that make up one business application, so
// they are tested and cut over together.
type Application struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Description string            `json:"description,omitempty"`
	WaveID      string            `json:"wave_id,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
	Archived    bool              `json:"archived"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
}

// Wave groups applications that migrate in the same window.
type Wave struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Description string            `json:"description,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
	Archived    bool              `json:"archived"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
}
