"""Seeded spoken-tutor dialogue text: one user turn (spoken question + typed instruction) -> one tutor reply.

Skills: vocabulary (definitions), grammar (correcting a sentence), repeat (\"repeat after me\": the reply is the
user's sentence), factual questions, arithmetic, spelling, pronunciation (syllable drills). Every turn carries a
speaking style for the reply (`slow`, `normal`, `fast`) and the typed instruction that asks for it.

Nothing seen in evaluation is seen in training:
- items (a word, a sentence, a fact, a sum) go to `train`, `validation` or `test` by a stable hash of the item
  itself, so the split of an item never changes with the seed or with the number of turns asked for;
- some question templates, reply templates and instruction phrasings are evaluation-only: `train` never uses them,
  `validation` and `test` use them next to the training ones.

    >>> turns = generate_dialogues(1000, split="train", seed=0)
    >>> turns[0].question_text, turns[0].instruction, turns[0].reply_text
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

SPLITS = ("train", "validation", "test")
STYLES = ("slow", "normal", "fast")
STYLE_WEIGHTS = (0.25, 0.5, 0.25)
# Share of items per split, by stable hash: train [0, 0.8), validation [0.8, 0.9), test [0.9, 1).
ITEM_SPLIT_BOUNDS = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}
# Common English words (most frequent first): the general-English sentences of the listening data and of the text
# stage's copy turns, so the small thinker hears and writes far more words than the tutoring dialogue holds.
WORDS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "english_words.txt")


@dataclass(frozen=True)
class DialogueTurn:
    """One spoken tutoring exchange.

    Attributes:
        skill: one of `SKILLS`.
        item: the item's stable key (e.g. `vocabulary:enormous`); an item lives in exactly one split.
        template: ids of the templates used, `question/reply/instruction` (e.g. `vocabulary.q2/vocabulary.r0/slow.1`).
        instruction: text the user types with the spoken turn ("Speak slowly.", "Repeat after me."); may be empty.
        style: speaking style asked of the reply: `slow`, `normal` or `fast`.
        question_text: what the user says.
        reply_text: what the tutor says.
    """

    skill: str
    item: str
    template: str
    instruction: str
    style: str
    question_text: str
    reply_text: str

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Item banks
# ---------------------------------------------------------------------------------------------------------------

# (word, meaning): the meaning reads after "X means ...".
VOCABULARY = (
    ("enormous", "very large"), ("tiny", "very small"), ("ancient", "very old"), ("rapid", "very fast"),
    ("fragile", "easy to break"), ("brave", "not afraid of danger"), ("curious", "eager to know or learn something"),
    ("generous", "happy to give to others"), ("honest", "telling the truth"), ("silent", "making no sound"),
    ("delighted", "very pleased"), ("exhausted", "extremely tired"), ("furious", "very angry"),
    ("timid", "shy and easily frightened"), ("vast", "extremely large in area"), ("damp", "slightly wet"),
    ("chilly", "unpleasantly cold"), ("cautious", "careful to avoid danger"), ("fortunate", "lucky"),
    ("humble", "not proud"), ("clumsy", "moving in an awkward way that often breaks things"),
    ("gloomy", "dark or sad"), ("hasty", "done too quickly"), ("loyal", "always supporting a friend"),
    ("rare", "not found very often"), ("sturdy", "strong and not easily broken"), ("tidy", "neat and in order"),
    ("vivid", "very bright and clear"), ("weary", "tired"), ("eager", "wanting to do something very much"),
    ("fierce", "violent and frightening"), ("gentle", "kind and calm"), ("hollow", "empty inside"),
    ("jolly", "happy and cheerful"), ("keen", "very interested"), ("modest", "not talking much about yourself"),
    ("narrow", "not wide"), ("obvious", "easy to see or understand"), ("polite", "having good manners"),
    ("quarrel", "an angry argument"), ("remote", "far away from other places"), ("shallow", "not deep"),
    ("thrilled", "very excited and pleased"), ("urgent", "needing attention at once"),
    ("vacant", "empty, with nobody in it"), ("wealthy", "rich"), ("yearn", "to want something very much"),
    ("abundant", "more than enough"), ("bewildered", "very confused"), ("conceal", "to hide"),
    ("dwell", "to live in a place"), ("elated", "very happy"), ("feeble", "weak"),
    ("grateful", "thankful"), ("hazard", "a danger"), ("imitate", "to copy"), ("journey", "a trip from one place to another"),
    ("knowledge", "what you know"), ("linger", "to stay longer than needed"), ("mend", "to repair"),
    ("neglect", "to fail to take care of something"), ("observe", "to watch carefully"),
    ("persuade", "to make someone agree by giving reasons"), ("recall", "to remember"),
    ("scarce", "hard to find"), ("tremble", "to shake"), ("unite", "to join together"),
    ("vanish", "to disappear"), ("wander", "to walk with no clear goal"), ("accurate", "exactly right"),
    ("blend", "to mix together"), ("compare", "to look at how things are alike or different"),
    ("descend", "to go down"), ("examine", "to look at closely"), ("fable", "a short story that teaches a lesson"),
    ("glance", "a quick look"), ("harvest", "the gathering of crops"), ("inhabit", "to live in"),
    ("jagged", "with sharp, uneven edges"), ("lecture", "a talk given to teach people"),
    ("migrate", "to move from one region to another"), ("nimble", "quick and light in movement"),
    ("opponent", "someone you compete against"), ("predict", "to say what will happen"),
    ("reluctant", "not willing"), ("soar", "to fly high"), ("transparent", "clear enough to see through"),
    ("upset", "unhappy or worried"), ("vibrant", "full of energy and colour"), ("wisdom", "good judgement"),
    ("anxious", "worried"), ("border", "the line between two countries"), ("century", "one hundred years"),
    ("decade", "ten years"), ("estimate", "a rough guess of a number"), ("frequent", "happening often"),
    ("gigantic", "extremely big"), ("horizon", "the line where the sky seems to meet the land"),
    ("ignore", "to pay no attention to"), ("journal", "a diary or a magazine"), ("landscape", "what you see of an area of land"),
    ("method", "a way of doing something"), ("nutritious", "good for your health as food"), ("ordinary", "normal"),
    ("patient", "able to wait calmly"), ("require", "to need"), ("swift", "quick"), ("triumph", "a great victory"),
    ("unique", "the only one of its kind"), ("volunteer", "someone who helps without being paid"),
    ("whisper", "to speak very quietly"), ("adore", "to love very much"), ("brief", "short"),
    ("cluster", "a small group of things close together"), ("drowsy", "sleepy"), ("fascinate", "to interest very much"),
    ("grasp", "to hold firmly"), ("hesitate", "to pause before doing something"), ("immense", "very big"),
    ("marvel", "a wonderful thing"), ("pledge", "a serious promise"),
)

# (sentence with a mistake, corrected sentence, short reason).
GRAMMAR = (
    ("She go to school every day.", "She goes to school every day.", "With she, the verb takes an s."),
    ("He don't like apples.", "He doesn't like apples.", "With he, we say doesn't."),
    ("I has two brothers.", "I have two brothers.", "With I, we say have."),
    ("They was at home yesterday.", "They were at home yesterday.", "With they, the past of be is were."),
    ("We goes to the park on Sundays.", "We go to the park on Sundays.", "With we, the verb has no s."),
    ("She is more taller than me.", "She is taller than me.", "Taller already compares, so drop more."),
    ("I seen that film last week.", "I saw that film last week.", "The simple past of see is saw."),
    ("He runned to the bus.", "He ran to the bus.", "The past of run is ran."),
    ("I am agree with you.", "I agree with you.", "Agree is a verb, so drop am."),
    ("She can sings very well.", "She can sing very well.", "After can, use the plain verb."),
    ("There is three cats in the garden.", "There are three cats in the garden.", "Three cats is plural, so use are."),
    ("I have went there before.", "I have gone there before.", "After have, use gone."),
    ("He is a honest man.", "He is an honest man.", "Honest starts with a vowel sound, so use an."),
    ("I want an banana.", "I want a banana.", "Banana starts with a consonant sound, so use a."),
    ("She didn't went to work.", "She didn't go to work.", "After didn't, use the plain verb."),
    ("The childs are playing.", "The children are playing.", "The plural of child is children."),
    ("I bought three book.", "I bought three books.", "Three needs the plural, books."),
    ("He is married with a doctor.", "He is married to a doctor.", "We say married to."),
    ("I am living here since two years.", "I have lived here for two years.", "Use have lived and for with a length of time."),
    ("Me and him went home.", "He and I went home.", "The subject form is he and I."),
    ("She explained me the rule.", "She explained the rule to me.", "We explain something to someone."),
    ("I didn't saw anything.", "I didn't see anything.", "After didn't, use the plain verb."),
    ("He has many informations.", "He has a lot of information.", "Information has no plural."),
    ("Does she likes music?", "Does she like music?", "After does, use the plain verb."),
    ("I'm boring in this class.", "I'm bored in this class.", "Bored is how you feel."),
    ("We was late for dinner.", "We were late for dinner.", "With we, the past of be is were."),
    ("The news are good.", "The news is good.", "News takes a singular verb."),
    ("He cans swim.", "He can swim.", "Can never takes an s."),
    ("I will going tomorrow.", "I will go tomorrow.", "After will, use the plain verb."),
    ("She have a red car.", "She has a red car.", "With she, we say has."),
    ("My sister is more older than me.", "My sister is older than me.", "Older already compares, so drop more."),
    ("He speak English well.", "He speaks English well.", "With he, the verb takes an s."),
    ("I am knowing the answer.", "I know the answer.", "Know is not used in the continuous form."),
    ("They doesn't understand.", "They don't understand.", "With they, we say don't."),
    ("It is the most good day.", "It is the best day.", "The superlative of good is best."),
    ("She is more happy today.", "She is happier today.", "Short adjectives take er."),
    ("I have ate breakfast.", "I have eaten breakfast.", "After have, use eaten."),
    ("He buyed a new phone.", "He bought a new phone.", "The past of buy is bought."),
    ("The womans are talking.", "The women are talking.", "The plural of woman is women."),
    ("I am here since Monday.", "I have been here since Monday.", "Use have been with since."),
    ("Where you are going?", "Where are you going?", "In a question, are comes before you."),
    ("What time it is?", "What time is it?", "In a question, is comes before it."),
    ("He told to me a story.", "He told me a story.", "Tell takes the person directly."),
    ("She said me hello.", "She said hello to me.", "We say something to someone."),
    ("I look forward to see you.", "I look forward to seeing you.", "After look forward to, use the ing form."),
    ("I enjoy to read.", "I enjoy reading.", "After enjoy, use the ing form."),
    ("He suggested to go home.", "He suggested going home.", "After suggest, use the ing form."),
    ("She is good in math.", "She is good at math.", "We say good at."),
    ("I arrived to the station.", "I arrived at the station.", "We arrive at a place."),
    ("We discussed about the plan.", "We discussed the plan.", "Discuss takes no about."),
    ("The car is more fast than the bike.", "The car is faster than the bike.", "Short adjectives take er."),
    ("I have two sister.", "I have two sisters.", "Two needs the plural, sisters."),
    ("She don't have time.", "She doesn't have time.", "With she, we say doesn't."),
    ("He was born at June.", "He was born in June.", "We use in with months."),
    ("I will see you in Monday.", "I will see you on Monday.", "We use on with days."),
    ("The meeting is on five o'clock.", "The meeting is at five o'clock.", "We use at with clock times."),
    ("I am very interesting in music.", "I am very interested in music.", "Interested is how you feel."),
    ("Everybody are here.", "Everybody is here.", "Everybody takes a singular verb."),
    ("I writed a letter.", "I wrote a letter.", "The past of write is wrote."),
    ("She teached us well.", "She taught us well.", "The past of teach is taught."),
    ("He goed home early.", "He went home early.", "The past of go is went."),
    ("I catched the ball.", "I caught the ball.", "The past of catch is caught."),
    ("The mouses ran away.", "The mice ran away.", "The plural of mouse is mice."),
    ("Our teeths are white.", "Our teeth are white.", "Teeth is already plural."),
    ("He has less friends than me.", "He has fewer friends than me.", "Use fewer with things you can count."),
    ("Can you borrow me a pen?", "Can you lend me a pen?", "You lend something to someone."),
    ("I did a mistake.", "I made a mistake.", "We make mistakes."),
    ("She makes her homework.", "She does her homework.", "We do homework."),
    ("It depends of the weather.", "It depends on the weather.", "We say depends on."),
    ("I am thinking to leave.", "I am thinking of leaving.", "We say thinking of, then the ing form."),
    ("He is afraid from dogs.", "He is afraid of dogs.", "We say afraid of."),
    ("If I will see him, I will tell him.", "If I see him, I will tell him.", "After if, use the present tense."),
    ("I wish I can fly.", "I wish I could fly.", "After wish, use could."),
    ("She asked where was the station.", "She asked where the station was.", "In a reported question, the verb goes last."),
    ("This is the man which helped me.", "This is the man who helped me.", "Use who for people."),
    ("I didn't went anywhere.", "I didn't go anywhere.", "After didn't, use the plain verb."),
    ("He work in a bank.", "He works in a bank.", "With he, the verb takes an s."),
    ("The book is on the table since morning.", "The book has been on the table since morning.", "Use has been with since."),
    ("She sings good.", "She sings well.", "Well describes how someone does something."),
)

# Sentences for "repeat after me": the reply is the same sentence.
REPEAT_SENTENCES = (
    "The cat is sleeping on the mat.", "I would like a cup of tea.", "The train leaves at nine.",
    "My brother plays the guitar.", "It is raining outside.", "We are going to the beach tomorrow.",
    "Please close the door.", "She reads a book every night.", "The sun rises in the east.",
    "Can I have the bill, please?", "Where is the nearest station?", "I am learning English.",
    "The children are playing in the park.", "He drinks coffee every morning.", "This soup is very hot.",
    "Thank you for your help.", "I left my keys at home.", "The shop opens at eight.",
    "My favourite colour is blue.", "We had pizza for dinner.", "The dog is barking loudly.",
    "Turn left at the corner.", "The museum is closed on Mondays.", "I need to buy some bread.",
    "Her birthday is in May.", "They live in a small house.", "The river is very wide here.",
    "Could you speak more slowly?", "I will call you later.", "The flowers smell lovely.",
    "He missed the last bus.", "Let's take a short break.", "The window is open.",
    "My phone battery is low.", "I like walking in the rain.", "The meeting starts at ten.",
    "She has a beautiful voice.", "We watched a film last night.", "The baby is smiling.",
    "I forgot my umbrella.", "The bakery sells fresh bread.", "It is a lovely day today.",
    "He is taller than his father.", "The lesson was very interesting.", "Please sit down.",
    "I usually walk to work.", "The kettle is boiling.", "Our garden is full of roses.",
    "The plane landed on time.", "She wrote a letter to her friend.", "I can't find my glasses.",
    "The library is quiet.", "We need more milk.", "The car is in the garage.",
    "He painted the fence green.", "I have a question.", "The water is cold.",
    "My sister works in a hospital.", "The bus was late again.", "I enjoy cooking.",
    "The moon is bright tonight.", "They are waiting for us.", "The tea is too sweet.",
    "She smiled at the teacher.", "I lost my wallet yesterday.", "The film starts soon.",
    "We planted a tree.", "The room is very warm.", "He fixed the old clock.",
    "I prefer apples to oranges.", "The road is closed.", "My cousin is visiting us.",
    "The birds are singing.", "She speaks three languages.", "I am sorry I am late.",
    "The market is busy today.", "He ran across the field.", "The soup needs more salt.",
    "Please wait here.", "I have never been to Spain.", "The cake is in the oven.",
    "We walked along the beach.", "My grandmother tells great stories.", "The lights are off.",
    "He wears a blue jacket.", "I will meet you at the station.", "The snow is melting.",
    "She forgot her password.", "The test was easy.", "We are out of sugar.",
    "The concert was amazing.", "He likes to swim in the sea.", "I wake up at seven.",
    "The kitten is very playful.", "They built a sandcastle.", "The bridge is very old.",
    "I hope you feel better soon.", "The garden needs water.", "She bought a new dress.",
    "My teacher is very kind.", "The clock on the wall is slow.", "We should leave now.",
    "He answered every question.", "The apples are ripe.", "I will carry your bag.",
    "The story has a happy ending.", "Our neighbours are friendly.", "The coffee smells good.",
)

# (question, answer as a full sentence).
FACTS = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("What is the capital of Kenya?", "The capital of Kenya is Nairobi."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("What is the capital of Portugal?", "The capital of Portugal is Lisbon."),
    ("What is the capital of Greece?", "The capital of Greece is Athens."),
    ("What is the capital of Ireland?", "The capital of Ireland is Dublin."),
    ("What is the capital of Norway?", "The capital of Norway is Oslo."),
    ("What is the capital of Peru?", "The capital of Peru is Lima."),
    ("What is the capital of Argentina?", "The capital of Argentina is Buenos Aires."),
    ("What is the capital of Russia?", "The capital of Russia is Moscow."),
    ("What is the capital of China?", "The capital of China is Beijing."),
    ("What is the capital of India?", "The capital of India is New Delhi."),
    ("What is the capital of Mexico?", "The capital of Mexico is Mexico City."),
    ("What is the capital of Poland?", "The capital of Poland is Warsaw."),
    ("How many days are there in a week?", "There are seven days in a week."),
    ("How many months are there in a year?", "There are twelve months in a year."),
    ("How many hours are there in a day?", "There are twenty four hours in a day."),
    ("How many minutes are there in an hour?", "There are sixty minutes in an hour."),
    ("How many seconds are there in a minute?", "There are sixty seconds in a minute."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many legs does an insect have?", "An insect has six legs."),
    ("How many continents are there?", "There are seven continents."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a square have?", "A square has four sides."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What colour is the sky on a clear day?", "On a clear day the sky is blue."),
    ("What colour do you get when you mix blue and yellow?", "Blue and yellow make green."),
    ("What colour do you get when you mix red and white?", "Red and white make pink."),
    ("What colour do you get when you mix red and yellow?", "Red and yellow make orange."),
    ("What is the largest planet in our solar system?", "The largest planet in our solar system is Jupiter."),
    ("Which planet is closest to the sun?", "Mercury is the planet closest to the sun."),
    ("Which planet is known as the red planet?", "Mars is known as the red planet."),
    ("What do bees make?", "Bees make honey."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("At what temperature does water freeze in Celsius?", "Water freezes at zero degrees Celsius."),
    ("At what temperature does water boil in Celsius?", "At sea level, water boils at one hundred degrees Celsius."),
    ("What gas do plants take in from the air?", "Plants take in carbon dioxide from the air."),
    ("What gas do we need to breathe?", "We need oxygen to breathe."),
    ("What is the largest ocean on Earth?", "The Pacific is the largest ocean on Earth."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("What is the tallest mountain in the world?", "Mount Everest is the tallest mountain in the world."),
    ("What is the largest animal on Earth?", "The blue whale is the largest animal on Earth."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("What is a baby cat called?", "A baby cat is called a kitten."),
    ("What is a baby dog called?", "A baby dog is called a puppy."),
    ("What is a baby cow called?", "A baby cow is called a calf."),
    ("What is a baby sheep called?", "A baby sheep is called a lamb."),
    ("What is a baby horse called?", "A baby horse is called a foal."),
    ("What is a group of wolves called?", "A group of wolves is called a pack."),
    ("What is a group of fish called?", "A group of fish is called a school."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What is the opposite of happy?", "The opposite of happy is sad."),
    ("What is the opposite of early?", "The opposite of early is late."),
    ("What is the opposite of heavy?", "The opposite of heavy is light."),
    ("What is the opposite of ancient?", "The opposite of ancient is modern."),
    ("What is the plural of mouse?", "The plural of mouse is mice."),
    ("What is the plural of foot?", "The plural of foot is feet."),
    ("What is the plural of child?", "The plural of child is children."),
    ("What is the past tense of go?", "The past tense of go is went."),
    ("What is the past tense of eat?", "The past tense of eat is ate."),
    ("What is the past tense of think?", "The past tense of think is thought."),
    ("Which season comes after winter?", "Spring comes after winter."),
    ("Which season comes after summer?", "Autumn comes after summer."),
    ("What is the first month of the year?", "January is the first month of the year."),
    ("What is the last month of the year?", "December is the last month of the year."),
    ("Which day comes after Monday?", "Tuesday comes after Monday."),
    ("Which day comes before Sunday?", "Saturday comes before Sunday."),
    ("What do we call a person who teaches?", "A person who teaches is called a teacher."),
    ("What do we call a doctor for animals?", "A doctor for animals is called a vet."),
    ("What do we call a person who flies a plane?", "A person who flies a plane is called a pilot."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the main language of Brazil?", "The main language of Brazil is Portuguese."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is A U."),
    ("What is the chemical formula for water?", "The chemical formula for water is H two O."),
    ("How many players are on a football team on the field?", "A football team has eleven players on the field."),
    ("How many strings does a violin have?", "A violin has four strings."),
    ("What instrument has black and white keys?", "A piano has black and white keys."),
)

# (word, syllables as spoken chunks) for pronunciation drills.
PRONUNCIATION = (
    ("banana", ("ba", "na", "na")), ("computer", ("com", "pu", "ter")), ("elephant", ("el", "e", "phant")),
    ("tomato", ("to", "ma", "to")), ("umbrella", ("um", "brel", "la")), ("vegetable", ("veg", "e", "ta", "ble")),
    ("chocolate", ("choc", "o", "late")), ("important", ("im", "por", "tant")), ("beautiful", ("beau", "ti", "ful")),
    ("hospital", ("hos", "pi", "tal")), ("tomorrow", ("to", "mor", "row")), ("yesterday", ("yes", "ter", "day")),
    ("library", ("li", "brar", "y")), ("February", ("Feb", "ru", "ar", "y")), ("Wednesday", ("Wednes", "day")),
    ("comfortable", ("com", "fort", "a", "ble")), ("interesting", ("in", "ter", "est", "ing")),
    ("restaurant", ("res", "tau", "rant")), ("temperature", ("tem", "per", "a", "ture")),
    ("photograph", ("pho", "to", "graph")), ("photographer", ("pho", "tog", "ra", "pher")),
    ("family", ("fam", "i", "ly")), ("potato", ("po", "ta", "to")), ("animal", ("an", "i", "mal")),
    ("celebrate", ("cel", "e", "brate")), ("dinosaur", ("di", "no", "saur")), ("hamburger", ("ham", "bur", "ger")),
    ("kangaroo", ("kan", "ga", "roo")), ("magazine", ("mag", "a", "zine")), ("octopus", ("oc", "to", "pus")),
    ("pineapple", ("pine", "ap", "ple")), ("remember", ("re", "mem", "ber")), ("September", ("Sep", "tem", "ber")),
    ("strawberry", ("straw", "ber", "ry")), ("telephone", ("tel", "e", "phone")), ("understand", ("un", "der", "stand")),
    ("volcano", ("vol", "ca", "no")), ("wonderful", ("won", "der", "ful")), ("adventure", ("ad", "ven", "ture")),
    ("butterfly", ("but", "ter", "fly")), ("calendar", ("cal", "en", "dar")), ("delicious", ("de", "li", "cious")),
    ("education", ("ed", "u", "ca", "tion")), ("fantastic", ("fan", "tas", "tic")), ("gorilla", ("go", "ril", "la")),
    ("helicopter", ("hel", "i", "cop", "ter")), ("invitation", ("in", "vi", "ta", "tion")),
    ("January", ("Jan", "u", "ar", "y")), ("kitchen", ("kitch", "en")), ("lemonade", ("lem", "on", "ade")),
    ("mountain", ("moun", "tain")), ("newspaper", ("news", "pa", "per")), ("orange", ("or", "ange")),
    ("penguin", ("pen", "guin")), ("question", ("ques", "tion")), ("rectangle", ("rec", "tan", "gle")),
    ("sandwich", ("sand", "wich")), ("triangle", ("tri", "an", "gle")), ("uniform", ("u", "ni", "form")),
    ("vacation", ("va", "ca", "tion")), ("watermelon", ("wa", "ter", "mel", "on")), ("yogurt", ("yo", "gurt")),
    ("zebra", ("ze", "bra")), ("avocado", ("av", "o", "ca", "do")), ("biscuit", ("bis", "cuit")),
)

SPELLING_WORDS = (
    "because", "friend", "people", "school", "answer", "believe", "different", "enough", "favourite", "garden",
    "happy", "island", "juice", "knife", "laugh", "minute", "neighbour", "often", "picture", "quiet",
    "really", "sugar", "thought", "until", "village", "water", "yellow", "zero", "address", "beautiful",
    "calendar", "daughter", "early", "eight", "fruit", "guess", "heart", "idea", "journey", "kitchen",
    "listen", "machine", "night", "ocean", "pencil", "question", "rhythm", "science", "tomorrow", "unusual",
    "weather", "window", "young", "breakfast", "chair", "doctor", "eleven", "forty", "guitar", "house",
    "library", "mother", "nature", "orange", "purple", "river", "sister", "table", "uncle", "voice",
    "whale", "animal", "bridge", "circle", "dance", "engine", "flower", "ghost", "honey", "jacket",
    "lemon", "money", "number", "planet", "rabbit", "shoulder", "tiger", "violin", "wednesday", "yacht",
    "castle", "climb", "receive", "separate", "necessary", "business", "muscle", "scissors", "thumb", "wrist",
)

# Reference sentences: a different sentence in the reply's voice (1-5 s at a normal rate).
REFERENCE_SENTENCES = (
    "The morning light came slowly through the window.", "Every Saturday we walk along the old canal.",
    "The little boat drifted towards the harbour.", "A cold wind was blowing from the north.",
    "She kept her notes in a bright green folder.", "The village fair begins at noon on Sunday.",
    "Fresh bread was cooling on the kitchen table.", "He carried the heavy boxes up the stairs.",
    "The orchestra played a gentle tune.", "Our train was delayed by the snow.",
    "The garden was full of tall sunflowers.", "They painted the fence a pale shade of blue.",
    "A small dog followed us all the way home.", "The lake was calm and perfectly still.",
    "My uncle grows tomatoes on his balcony.", "The market stalls were packed with fruit.",
    "We heard thunder far away in the hills.", "The old clock chimed twelve times.",
    "Please remember to water the plants.", "The library stays open late on Thursdays.",
    "A flock of geese flew over the field.", "The soup simmered on the stove for an hour.",
    "She tied a red ribbon around the parcel.", "The children built a fort out of blankets.",
    "The road winds gently up the valley.", "He found a shiny coin under the bench.",
    "The museum has a famous painting of the sea.", "We watched the sunset from the pier.",
    "The bakery on the corner sells warm muffins.", "A light rain fell during the night.",
    "The bus stops right outside the school.", "The farmer checked the fences at dawn.",
    "Her grandmother knitted a thick wool scarf.", "The river rose after the heavy storm.",
    "They shared a picnic under the oak tree.", "The teacher wrote the date on the board.",
    "A bright star appeared above the rooftops.", "The cat watched the birds from the window.",
    "We packed our bags the night before.", "The path through the forest was muddy.",
    "He played the piano after dinner.", "The harbour lights flickered in the fog.",
    "The new bridge opened last spring.", "She read the letter twice before replying.",
    "The fields turned golden in late summer.", "My neighbour repairs old bicycles.",
    "The kettle whistled in the quiet kitchen.", "A tall lighthouse stands on the cliff.",
    "The shop window was decorated with lights.", "We counted the stars on the way home.",
    "The puppy chased its tail in circles.", "Snow covered the hills by morning.",
    "The choir practised every Tuesday evening.", "He left his umbrella on the train.",
    "The baker woke up before sunrise.", "A narrow lane led down to the beach.",
    "The postman knocked twice at the door.", "Our class visited the science museum.",
    "The apples fell softly onto the grass.", "She painted a picture of the mountains.",
)

# ---------------------------------------------------------------------------------------------------------------
# Templates: (id, text, evaluation_only)
# ---------------------------------------------------------------------------------------------------------------

QUESTION_TEMPLATES = {
    "vocabulary": (
        ("q0", "What does {word} mean?", False),
        ("q1", "What is the meaning of {word}?", False),
        ("q2", "Can you tell me what {word} means?", False),
        ("q3", "What does the word {word} mean?", False),
        ("q4", "I don't understand the word {word}.", False),
        ("q5", "Please explain the word {word}.", False),
        ("q6", "Could you define {word} for me?", True),
        ("q7", "I heard the word {word}. What does it mean?", True),
    ),
    "grammar": (
        ("q0", "Is this correct? {wrong}", False),
        ("q1", "Please correct my sentence. {wrong}", False),
        ("q2", "Can you fix this sentence? {wrong}", False),
        ("q3", "What is wrong with this? {wrong}", False),
        ("q4", "Did I say this right? {wrong}", False),
        ("q5", "Check my grammar, please. {wrong}", True),
        ("q6", "I wrote this: {wrong} Is it right?", True),
    ),
    "repeat": (("q0", "{sentence}", False),),
    "factual": (
        ("q0", "{question}", False),
        ("q1", "Quick question. {question}", False),
        ("q2", "Can you tell me something? {question}", False),
        ("q3", "I have a question. {question}", False),
        ("q4", "Do you know this? {question}", True),
    ),
    "arithmetic": (
        ("q0", "What is {a} {op} {b}?", False),
        ("q1", "How much is {a} {op} {b}?", False),
        ("q2", "Please work out {a} {op} {b}.", False),
        ("q3", "Can you calculate {a} {op} {b}?", False),
        ("q4", "Tell me the answer to {a} {op} {b}.", False),
        ("q5", "Could you help me with {a} {op} {b}?", True),
        ("q6", "I need to know {a} {op} {b}.", True),
    ),
    "spelling": (
        ("q0", "How do you spell {word}?", False),
        ("q1", "Can you spell {word} for me?", False),
        ("q2", "Please spell the word {word}.", False),
        ("q3", "What is the spelling of {word}?", False),
        ("q4", "How is {word} spelled?", True),
        ("q5", "I always forget how to spell {word}.", True),
    ),
    "pronunciation": (
        ("q0", "How do you pronounce {word}?", False),
        ("q1", "How do I say {word}?", False),
        ("q2", "Can you help me pronounce {word}?", False),
        ("q3", "Please break {word} into syllables.", False),
        ("q4", "What is the right way to say {word}?", True),
        ("q5", "I find {word} hard to say.", True),
    ),
}

REPLY_TEMPLATES = {
    "vocabulary": (
        ("r0", "{Word} means {meaning}.", False),
        ("r1", "The word {word} means {meaning}.", False),
        ("r2", "Good question. {Word} means {meaning}.", False),
        ("r3", "{Word}? It means {meaning}.", False),
        ("r4", "Here is the meaning of {word}: {meaning}.", True),
    ),
    "grammar": (
        ("r0", "You should say: {right} {reason}", False),
        ("r1", "Almost. The correct sentence is: {right} {reason}", False),
        ("r2", "Not quite. Say: {right} {reason}", False),
        ("r3", "Good try. {reason} So: {right}", True),
    ),
    "repeat": (("r0", "{sentence}", False),),
    "factual": (
        ("r0", "{answer}", False),
        ("r1", "Good question. {answer}", False),
        ("r2", "Here is the answer. {answer}", False),
        ("r3", "Sure. {answer}", True),
    ),
    "arithmetic": (
        ("r0", "{A} {op} {b} is {c}.", False),
        ("r1", "The answer is {c}.", False),
        ("r2", "{A} {op} {b} equals {c}.", False),
        ("r3", "Let me see. {A} {op} {b} makes {c}.", True),
    ),
    "spelling": (
        ("r0", "{Word} is spelled {letters}.", False),
        ("r1", "You spell it {letters}.", False),
        ("r2", "{letters}. That spells {word}.", False),
        ("r3", "It is {letters}. {Word}.", True),
    ),
    "pronunciation": (
        ("r0", "{Word}. Say it with me: {syllables}. {Word}.", False),
        ("r1", "Break it into parts: {syllables}. Now all together: {word}.", False),
        ("r2", "It has {count} syllables: {syllables}. {Word}.", False),
        ("r3", "Listen carefully: {syllables}. {Word}.", True),
    ),
}

# Style instructions the user types with the spoken turn, per style.
STYLE_INSTRUCTIONS = {
    "slow": (
        ("0", "Speak slowly.", False),
        ("1", "Please speak slowly.", False),
        ("2", "Say it slowly, please.", False),
        ("3", "Talk slowly.", False),
        ("4", "Slowly, please.", False),
        ("5", "Could you slow down?", True),
        ("6", "Take it slow.", True),
    ),
    "normal": (
        ("0", "", False),
        ("1", "Speak normally.", False),
        ("2", "Use your normal speed.", False),
        ("3", "Talk at a regular speed.", True),
    ),
    "fast": (
        ("0", "Speak quickly.", False),
        ("1", "Please talk fast.", False),
        ("2", "Say it quickly.", False),
        ("3", "Faster, please.", False),
        ("4", "Speak fast.", False),
        ("5", "Hurry up, please.", True),
        ("6", "Say it at a quick pace.", True),
    ),
}
# Chance that a normal-style turn carries no instruction at all.
EMPTY_NORMAL_INSTRUCTION = 0.7

REPEAT_INSTRUCTIONS = (
    ("0", "Repeat after me.", False),
    ("1", "Say this after me.", False),
    ("2", "Please repeat what I say.", False),
    ("3", "Repeat my sentence.", False),
    ("4", "Echo my sentence back to me.", True),
)

SKILLS = tuple(QUESTION_TEMPLATES)

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_OPERATIONS = {"plus": "+", "minus": "-", "times": "*", "divided by": "/"}


def number_to_words(number: int) -> str:
    """Spell a whole number from 0 to 999 in English words: 42 -> "forty two"."""
    if not 0 <= number <= 999 or number != int(number):
        raise ValueError(f"number_to_words spells whole numbers from 0 to 999, got {number!r}.")
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(number, 100)
    return f"{_ONES[hundreds]} hundred" + (f" and {number_to_words(rest)}" if rest else "")


def _arithmetic_items() -> tuple[tuple[int, str, int, int], ...]:
    """Every (a, operation, b, result) with small whole numbers: sums and differences to 20, products to 12 x 12,
    exact divisions with divisors 2..12."""
    items = []
    for a in range(21):
        for b in range(21):
            items.append((a, "plus", b, a + b))
            if a >= b:
                items.append((a, "minus", b, a - b))
    for a in range(13):
        for b in range(13):
            items.append((a, "times", b, a * b))
    for b in range(2, 13):
        for c in range(13):
            items.append((b * c, "divided by", b, c))
    return tuple(items)


ARITHMETIC = _arithmetic_items()


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key` alone (first 8 bytes of its SHA-1), used to split items."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64


def item_split(key: str) -> str:
    """The split (`train`, `validation`, `test`) an item belongs to, from its key alone."""
    fraction = stable_fraction(key)
    for split, (low, high) in ITEM_SPLIT_BOUNDS.items():
        if low <= fraction < high:
            return split
    return "test"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    return split


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _skill_items(skill: str) -> list[tuple[str, dict]]:
    """Every item of a skill as (key, template fields)."""
    if skill == "vocabulary":
        return [(f"vocabulary:{w}", {"word": w, "Word": _capitalise(w), "meaning": m}) for w, m in VOCABULARY]
    if skill == "grammar":
        return [(f"grammar:{wrong}", {"wrong": wrong, "right": right, "reason": reason}) for wrong, right, reason in GRAMMAR]
    if skill == "repeat":
        return [(f"repeat:{s}", {"sentence": s}) for s in REPEAT_SENTENCES]
    if skill == "factual":
        return [(f"factual:{q}", {"question": q, "answer": a}) for q, a in FACTS]
    if skill == "arithmetic":
        items = []
        for a, op, b, c in ARITHMETIC:
            fields = {"a": number_to_words(a), "A": _capitalise(number_to_words(a)), "op": op,
                      "b": number_to_words(b), "c": number_to_words(c)}
            items.append((f"arithmetic:{a}{_OPERATIONS[op]}{b}", fields))
        return items
    if skill == "spelling":
        return [
            (f"spelling:{w}", {"word": w, "Word": _capitalise(w), "letters": ", ".join(ch.upper() for ch in w)})
            for w in SPELLING_WORDS
        ]
    if skill == "pronunciation":
        return [
            (f"pronunciation:{w}", {"word": w, "Word": _capitalise(w), "syllables": ", ".join(parts),
                                     "count": number_to_words(len(parts))})
            for w, parts in PRONUNCIATION
        ]
    raise ValueError(f"Unknown skill {skill!r}: use one of {', '.join(SKILLS)}.")


def split_items(skill: str, split: str) -> list[tuple[str, dict]]:
    """The items of `skill` that belong to `split`, as (key, template fields)."""
    _check_split(split)
    return [item for item in _skill_items(skill) if item_split(item[0]) == split]


def _templates(options, split: str):
    """Templates a split may use: training ones only for `train`, all of them for evaluation splits."""
    return [t for t in options if split != "train" or not t[2]]


def repeat_instruction(rng: random.Random, split: str) -> tuple[str, str]:
    """A "repeat after me" phrasing `split` may use: (its template id, its text)."""
    repeat_id, text, _ = rng.choice(_templates(REPEAT_INSTRUCTIONS, split))
    return repeat_id, text


def typed_instruction(rng: random.Random, skill: str, split: str,
                      style_weights: Sequence[float] = STYLE_WEIGHTS) -> tuple[str, str, str]:
    """The typed instruction of a turn: a reply style drawn by `style_weights` and a phrasing that asks for it (often
    none for `normal`), after a "repeat after me" phrasing for the repeat skill. Returns (style, instruction
    template id, instruction text)."""
    style = rng.choices(STYLES, weights=style_weights)[0]
    style_id, style_text, _ = rng.choice(_templates(STYLE_INSTRUCTIONS[style], split))
    if style == "normal" and rng.random() < EMPTY_NORMAL_INSTRUCTION:
        style_id, style_text = "0", ""
    instruction_id = f"{style}.{style_id}"
    if skill != "repeat":
        return style, instruction_id, style_text
    repeat_id, repeat_text = repeat_instruction(rng, split)
    return style, f"repeat.{repeat_id}+{instruction_id}", f"{repeat_text} {style_text}".strip()


def repeat_turn(rng: random.Random, sentence: str, item: str, split: str = "train",
                style_weights: Sequence[float] = STYLE_WEIGHTS) -> DialogueTurn:
    """A "repeat after me" turn for any `sentence` (the user says it, the tutor says it back), phrased and styled as
    the dialogue's repeat turns of `split` are; `item` names it."""
    style, instruction_id, instruction = typed_instruction(rng, "repeat", split, style_weights)
    return DialogueTurn(skill="repeat", item=item, template=f"repeat.words/repeat.words/{instruction_id}",
                        instruction=instruction, style=style, question_text=sentence, reply_text=sentence)


def english_words() -> list[str]:
    """The common English word list (`english_words.txt`), most frequent first."""
    with open(WORDS_FILE, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def word_sentence(rng: random.Random, words: Sequence[str], count: int, end: str = ".") -> str:
    """`count` words drawn from `words` as a sentence: the first capitalised, `end` after the last
    ("Emit incomplete hyper behavioral downtown.")."""
    sentence = " ".join(rng.choice(words) for _ in range(count))
    return sentence[0].upper() + sentence[1:] + end


def reference_sentences(split: str) -> list[str]:
    """Sentences for reference-voice clips in `split` (held out like items)."""
    _check_split(split)
    return [s for s in REFERENCE_SENTENCES if item_split(f"reference:{s}") == split]


class DialogueGenerator:
    """Draws tutoring turns for one split, reproducibly from `seed`.

    Args:
        split: `train`, `validation` or `test`; decides which items and templates can appear.
        seed: seed of the random choices (skill, item, templates, style).
        skills: the skills to draw from (default: all of `SKILLS`), chosen with equal probability.
        style_weights: probabilities of `slow`, `normal`, `fast`.
    """

    def __init__(self, split: str = "train", seed: int = 0, skills: Sequence[str] | None = None,
                 style_weights: Sequence[float] = STYLE_WEIGHTS):
        self.split = _check_split(split)
        self.skills = tuple(skills) if skills else SKILLS
        unknown = [s for s in self.skills if s not in SKILLS]
        if unknown:
            raise ValueError(f"Unknown skill(s) {', '.join(unknown)}: choose from {', '.join(SKILLS)}.")
        if len(style_weights) != len(STYLES) or min(style_weights) < 0 or sum(style_weights) <= 0:
            raise ValueError(f"style_weights must be {len(STYLES)} non-negative numbers for {', '.join(STYLES)}.")
        self.style_weights = tuple(style_weights)
        self.items = {skill: split_items(skill, split) for skill in self.skills}
        empty = [s for s, items in self.items.items() if not items]
        if empty:
            raise ValueError(f"No {split} items for skill(s) {', '.join(empty)}.")
        # Seeded with a string, so the stream is the same on every platform and Python version.
        self.rng = random.Random(f"concept-talker-dialogue/{split}/{seed}")

    def turn(self) -> DialogueTurn:
        rng = self.rng
        skill = rng.choice(self.skills)
        key, fields = rng.choice(self.items[skill])
        question_id, question, _ = rng.choice(_templates(QUESTION_TEMPLATES[skill], self.split))
        reply_id, reply, _ = rng.choice(_templates(REPLY_TEMPLATES[skill], self.split))
        style, instruction_id, instruction = typed_instruction(rng, skill, self.split, self.style_weights)
        return DialogueTurn(
            skill=skill,
            item=key,
            template=f"{skill}.{question_id}/{skill}.{reply_id}/{instruction_id}",
            instruction=instruction,
            style=style,
            question_text=question.format(**fields),
            reply_text=reply.format(**fields),
        )

    def reference_sentence(self, avoid: str) -> str:
        """A reference-clip sentence of this split that differs from `avoid`."""
        choices = [s for s in reference_sentences(self.split) if s != avoid]
        return self.rng.choice(choices)


def generate_dialogues(
    count: int, split: str = "train", seed: int = 0, skills: Sequence[str] | None = None,
    style_weights: Sequence[float] = STYLE_WEIGHTS,
) -> list[DialogueTurn]:
    """`count` tutoring turns for `split`, distinct as long as the split's pool of (question, instruction, reply)
    allows; past that, turns repeat (the synthetic dataset still renders each one in another voice).

    Args:
        count: number of turns.
        split: `train`, `validation` or `test`.
        seed: random seed; the same arguments always give the same turns.
        skills: skills to draw from (default all).
        style_weights: probabilities of the `slow`, `normal` and `fast` reply styles.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}.")
    generator = DialogueGenerator(split, seed, skills, style_weights)
    turns, seen = [], set()
    misses = 0
    while len(turns) < count:
        turn = generator.turn()
        text = (turn.question_text, turn.instruction, turn.reply_text)
        # After many consecutive repeats the pool is nearly exhausted: accept repeats rather than loop forever.
        if text in seen and misses < 200:
            misses += 1
            continue
        misses = 0
        seen.add(text)
        turns.append(turn)
    return turns


__all__ = [
    "DialogueGenerator",
    "DialogueTurn",
    "SKILLS",
    "SPLITS",
    "STYLES",
    "generate_dialogues",
    "item_split",
    "number_to_words",
    "reference_sentences",
    "repeat_turn",
    "split_items",
]
